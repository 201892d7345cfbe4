"""tools/prepare_data.py: `check` on empty / correct layouts (real subprocess exit codes), `shapes` CLI."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

from tests.scripts import load_script

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'prepare_data.py')


def _run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, cwd=REPO, timeout=60)


def _tool():
    return load_script(TOOL, 'prepare_data')


def _touch(path, text='x'):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)


def _fake_layout(root, dataset):
    if dataset == 'imagenet':
        _touch(osp.join(root, 'train', 'n01', 'a.JPEG'))
        _touch(osp.join(root, 'val', 'v1.JPEG'))  # official flat val/ + ann files
        _touch(osp.join(root, 'meta', 'train.txt'), 'n01/a.JPEG 0\n')
        _touch(osp.join(root, 'meta', 'val.txt'), 'v1.JPEG 0\n')
    elif dataset == 'ade20k':
        root = osp.join(root, 'ADEChallengeData2016')  # the parent folder is accepted too
        for split in ('training', 'validation'):
            _touch(osp.join(root, 'images', split, 'ADE_1.jpg'))
            _touch(osp.join(root, 'annotations', split, 'ADE_1.png'))
    else:
        for split in ('train2017', 'val2017'):
            _touch(osp.join(root, split, '000000000001.jpg'))
            _touch(osp.join(root, 'annotations', f'instances_{split}.json'), json.dumps(dict(images=[])))


@pytest.mark.parametrize('dataset', ['imagenet', 'ade20k', 'coco'])
def test_check_empty_then_correct(dataset, tmp_path):
    res = _run('check', dataset, str(tmp_path))
    assert res.returncode == 1 and 'Traceback' not in res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) >= 3 and all(line.startswith('missing: ') for line in lines[:-1])
    _fake_layout(str(tmp_path), dataset)
    res = _run('check', dataset, str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert 'OK' in res.stdout


def test_check_reports_each_missing_part(tmp_path):
    tool = _tool()
    _fake_layout(str(tmp_path), 'coco')
    os.remove(tmp_path / 'annotations' / 'instances_val2017.json')
    problems = tool.check_coco(str(tmp_path))
    assert problems == [f'missing: {tmp_path}/annotations/instances_val2017.json (val2017 instance annotations)']
    _fake_layout(str(tmp_path / 'in'), 'imagenet')
    os.remove(tmp_path / 'in' / 'meta' / 'val.txt')
    assert [p.split(' ')[0] for p in tool.check_imagenet(str(tmp_path / 'in'))] == ['missing:']


def test_bad_input_one_line_no_traceback(tmp_path):
    res = _run('check', 'coco', str(tmp_path / 'nope'))
    assert res.returncode == 1 and res.stderr.strip().count('\n') == 0 and 'does not exist' in res.stderr
    res = _run('check', 'mnist', str(tmp_path))
    assert res.returncode != 0 and 'Traceback' not in res.stderr and 'invalid choice' in res.stderr
    tool = _tool()
    assert tool.main(['shapes', '--root', str(tmp_path), '--task', 'cls', '--classes', 'ring']) == 2


def test_shapes_cli_generates_then_is_idempotent(tmp_path, capsys):
    tool = _tool()
    args = ['shapes', '--root', str(tmp_path), '--task', 'all', '--image-size', '32', '--num-train', '4',
            '--num-val', '2', '--seed', '3']
    assert tool.main(args) == 0
    for task in ('cls', 'seg', 'det'):
        meta = json.load(open(tmp_path / task / 'shapes_meta.json'))
        assert meta['task'] == task and meta['params']['seed'] == 3 and meta['params']['num_train'] == 4
    capsys.readouterr()
    assert tool.main(args) == 0
    assert capsys.readouterr().out.count('up to date') == 3
    assert tool.main(['check', 'coco', str(tmp_path / 'det')]) == 0
