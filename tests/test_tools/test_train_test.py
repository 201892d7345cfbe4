"""End-to-end runs of tools/train.py, tools/test.py and tools/dist_train.sh on the synthetic shapes data."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_CFG = osp.join(ROOT, 'configs/linear_vit/linear-vit-t_shapes-cls.py')


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def run(args, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1',
               PORT=free_port())
    env.pop('TRITON_INTERPRET', None)
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1200, **kw)
    return out


def tiny_config(tmp_path, name='tiny.py', extra='', batch_size=16, plain_pipeline=False, drop_path_rate=0.2):
    """The default config on a small private copy of the data, with stochastic depth on (RNG matters)."""
    data = tmp_path / 'cls'
    text = f'''
_base_ = [{DEFAULT_CFG!r}]
shapes_generate = dict(image_size=32, num_train=128, num_val=64, seed=1)
model = dict(backbone=dict(arch=dict(embed_dims=32, num_layers=2, num_heads=2, mlp_ratio=2.0), img_size=32,
                           patch_size=4, stem='patch', drop_path_rate={drop_path_rate}), head=dict(in_channels=32))
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(batch_size={batch_size}, num_workers=0,
                        sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
                        dataset=dict(data_root={str(data)!r}, generate=shapes_generate{
                            ', pipeline=train_pipeline' if plain_pipeline else ''}))
val_dataloader = dict(num_workers=0, dataset=dict(data_root={str(data)!r}, generate=shapes_generate))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=3)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(max_keep_ckpts=5, save_best=None))
{extra}
'''
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def state(ckpt):
    return torch.load(ckpt, map_location='cpu', weights_only=False)['state_dict']


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    cfg = tiny_config(tmp_path)
    full = run([sys.executable, 'tools/train.py', cfg, '--work-dir', str(tmp_path / 'full')])
    assert full.returncode == 0, full.stderr[-3000:]

    cut = tiny_config(tmp_path, 'cut.py', extra=(
        "custom_imports = dict(imports=['vla_mm', 'tests.instrumentation'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='vla_mm.DeterministicResumeHook'), dict(type='InterruptAfterEpochHook', epoch=1)]"))
    crashed = run([sys.executable, 'tools/train.py', cut, '--work-dir', str(tmp_path / 'resumed')])
    assert crashed.returncode == 3, crashed.stderr[-3000:]
    assert osp.isfile(tmp_path / 'resumed' / 'epoch_1.pth')
    assert not osp.exists(tmp_path / 'resumed' / 'epoch_2.pth')

    resumed = run([sys.executable, 'tools/train.py', cfg, '--work-dir', str(tmp_path / 'resumed'), '--resume'])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed' in resumed.stdout + resumed.stderr  # MMEngine logs 'resumed epoch: 1, iter: ...'

    a, b = state(tmp_path / 'full' / 'epoch_3.pth'), state(tmp_path / 'resumed' / 'epoch_3.pth')
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f'{k} differs after resume'
    # and the run really trained: weights moved away from epoch 1
    c = state(tmp_path / 'resumed' / 'epoch_1.pth')
    assert any(not torch.equal(a[k], c[k]) for k in a)

    # tools/test.py on both checkpoints gives the same metrics
    metrics = []
    for run_dir in ('full', 'resumed'):
        t = run([sys.executable, 'tools/test.py', cfg, str(tmp_path / run_dir / 'epoch_3.pth'), '--work-dir',
                 str(tmp_path / f'test_{run_dir}')])
        assert t.returncode == 0, t.stderr[-3000:]
        metrics.append(json.load(open(tmp_path / f'test_{run_dir}' / 'test_metrics.json'))['metrics'])
    assert metrics[0] == metrics[1]


def test_dist_train_two_gloo_processes_equal_one_process_double_batch(tmp_path):
    marks = tmp_path / 'marks'
    marks.mkdir()
    common = ("custom_imports = dict(imports=['vla_mm', 'tests.instrumentation'], allow_failed_imports=False)\n"
              f"custom_hooks = [dict(type='vla_mm.DeterministicResumeHook'), "
              f"dict(type='RankMarkerHook', out_dir={str(marks)!r})]\n"
              "train_cfg = dict(max_epochs=2)\n")
    # no random augmentation: the two runs must see the same pixels
    two = tiny_config(tmp_path, 'two.py', extra=common, batch_size=8, plain_pipeline=True, drop_path_rate=0.0)
    one = tiny_config(tmp_path, 'one.py', extra=common, batch_size=16, plain_pipeline=True, drop_path_rate=0.0)
    single = run([sys.executable, 'tools/train.py', one, '--work-dir', str(tmp_path / 'one')])
    assert single.returncode == 0, single.stderr[-3000:]
    os.remove(marks / 'rank0.done')
    dist = run(['bash', 'tools/dist_train.sh', two, '2', '--work-dir', str(tmp_path / 'two')])
    if dist.returncode != 0 and 'terminate called without an active exception' in dist.stderr:
        # a gloo rank aborting at interpreter exit after training (seen about once in 10 runs before
        # tools/train.py destroyed the process group itself): one clean re-run is required
        import shutil
        shutil.rmtree(tmp_path / 'two')
        for f in os.listdir(marks):
            os.remove(marks / f)
        dist = run(['bash', 'tools/dist_train.sh', two, '2', '--work-dir', str(tmp_path / 'two')])
    assert dist.returncode == 0, dist.stderr[-3000:]
    # both ranks trained the same number of iterations (2 epochs x 128 images / (2 x 8) = 16)
    assert sorted(os.listdir(marks)) == ['rank0.done', 'rank1.done']
    iters = {f: (marks / f).read_text() for f in os.listdir(marks)}
    assert set(iters.values()) == {'16'}, iters
    # rank 0 alone wrote checkpoints and logs: one run folder, one log file
    assert osp.isfile(tmp_path / 'two' / 'epoch_2.pth')
    logs = glob.glob(str(tmp_path / 'two' / '*' / '*.log'))
    assert len(logs) == 1, logs
    a, b = state(tmp_path / 'one' / 'epoch_2.pth'), state(tmp_path / 'two' / 'epoch_2.pth')
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), f'{k}: max diff {(a[k] - b[k]).abs().max()}'


def test_default_job_reaches_95_and_test_tool_reproduces_it(tmp_path):
    """The README's main job: the default config trains to >= 95% top-1 on the synthetic val split, and
    tools/test.py on the saved checkpoint gives the same accuracy."""
    work = tmp_path / 'default'
    train = run([sys.executable, 'tools/train.py', DEFAULT_CFG, '--work-dir', str(work)])
    assert train.returncode == 0, train.stderr[-3000:]
    run_dir = sorted(d for d in os.listdir(work) if osp.isdir(work / d) and d.startswith('20'))[-1]
    val = [json.loads(line) for line in open(work / run_dir / 'vis_data' / 'scalars.json')]
    accs = [r['accuracy/top1'] for r in val if 'accuracy/top1' in r]
    assert accs and accs[-1] >= 95.0, accs
    ckpt = open(work / 'last_checkpoint').read().strip()
    test = run([sys.executable, 'tools/test.py', DEFAULT_CFG, ckpt, '--work-dir', str(tmp_path / 'test')])
    assert test.returncode == 0, test.stderr[-3000:]
    metrics = json.load(open(tmp_path / 'test' / 'test_metrics.json'))['metrics']
    assert metrics['accuracy/top1'] == pytest.approx(accs[-1], abs=1e-6)
