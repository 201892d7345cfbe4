"""Bad input to tools/train.py and tools/test.py: one clear line on stderr, exit code 2, no traceback."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = 'configs/linear_vit/linear-vit-t_shapes-cls.py'
IN1K = 'configs/linear_vit/linear-vit-t_8xb128_in1k.py'


def _run(tool, *args):
    # in-process: the tools' main(argv) is what the scripts run; exits are SystemExit
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        mod = __import__(tool)
        return mod.main(list(args))
    finally:
        sys.path.pop(0)


def _expect_error(capsys, tool, *args):
    with pytest.raises(SystemExit) as e:
        _run(tool, *args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith('error: ')
    return err[0]


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.fixture(autouse=True)
def _fresh_loggers():
    """In-process runs: MMEngine loggers made by an earlier test hold handlers on that test's (now closed)
    captured stderr; drop them so each test's output is its own."""
    from mmengine.logging import MMLogger
    for logger in list(MMLogger._instance_dict.values()):
        for h in list(logger.handlers):
            logger.removeHandler(h)
    MMLogger._instance_dict.clear()
    yield


def test_missing_config(capsys):
    msg = _expect_error(capsys, 'train', 'configs/linear_vit/linear-vit-t_shapes-clz.py')
    assert 'config file not found' in msg and 'linear-vit-t_shapes-cls.py' in msg  # names the close match


def test_unknown_cfg_option_key(capsys):
    msg = _expect_error(capsys, 'train', CFG, '--cfg-options', 'train_cfg.max_epoch=1')
    assert "'train_cfg.max_epoch'" in msg and 'train_cfg.max_epochs' in msg


def test_unknown_backbone_type(capsys, tmp_path):
    msg = _expect_error(capsys, 'train', CFG, '--work-dir', str(tmp_path), '--cfg-options',
                        'model.backbone.type=vla_mm.LinearVit')
    assert "unknown model type 'vla_mm.LinearVit'" in msg and 'LinearViT' in msg


def test_unknown_mixer_type(capsys, tmp_path):
    msg = _expect_error(capsys, 'train', CFG, '--work-dir', str(tmp_path), '--cfg-options',
                        '+model.backbone.mixer.type=linear_atn')
    assert "unknown token mixer type 'linear_atn'" in msg and 'linear_attn' in msg


def test_missing_resume_checkpoint(capsys, tmp_path):
    msg = _expect_error(capsys, 'train', CFG, '--resume', str(tmp_path / 'nope.pth'))
    assert 'resume checkpoint not found' in msg


def test_missing_and_unreadable_test_checkpoint(capsys, tmp_path):
    msg = _expect_error(capsys, 'test', CFG, str(tmp_path / 'nope.pth'))
    assert 'checkpoint not found' in msg
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    assert 'checkpoint is empty' in _expect_error(capsys, 'test', CFG, str(empty))
    if os.geteuid() != 0:  # root reads everything
        unreadable = tmp_path / 'locked.pth'
        unreadable.write_bytes(b'x')
        unreadable.chmod(0)
        assert 'not readable' in _expect_error(capsys, 'test', CFG, str(unreadable))


def test_corrupt_checkpoint_in_test_tool(capsys, tmp_path):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'garbage' * 100)
    msg = _expect_error(capsys, 'test', CFG, str(bad), '--work-dir', str(tmp_path / 'w'))
    assert 'truncated or corrupt' in msg and str(bad) in msg


@pytest.mark.parametrize('state', ['missing', 'empty'])
def test_missing_or_empty_dataset_dir(capsys, tmp_path, state):
    root = tmp_path / 'imagenet'
    if state == 'empty':
        root.mkdir()
    opts = [f'{k}.dataset.data_root={root}' for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    msg = _expect_error(capsys, 'train', IN1K, '--cfg-options', *opts)
    assert f'dataset directory {"not found" if state == "missing" else "is empty"}: {root}' in msg


def test_script_prints_no_traceback(tmp_path):
    out = subprocess.run([sys.executable, 'tools/train.py', 'configs/nope.py'], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip() == 'error: config file not found: configs/nope.py'
    assert 'Traceback' not in out.stderr
