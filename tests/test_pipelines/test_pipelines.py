"""The four pipelines end to end on tiny synthetic data (CPU): tools/train.py trains a few iterations and
evaluates with the task's real metric, tools/test.py evaluates the checkpoint, tools/dist_train.sh runs each
with 2 gloo processes. Configs are the real ones of configs/linear_vit/, shrunk by tiny.py."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from . import tiny

ROOT = tiny.ROOT


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def run(args, retries=0):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1',
               PORT=free_port())
    env.pop('TRITON_INTERPRET', None)
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    if out.returncode != 0 and retries and 'terminate called without an active exception' in out.stderr:
        # a rare abort of a gloo rank at interpreter exit, after training finished (seen once in ~10 runs);
        # one clean re-run is required
        return run(args, retries - 1)
    assert out.returncode == 0, (out.stdout[-2000:] + out.stderr[-4000:])
    return out


def train(cfg, work_dir, *extra):
    return run([sys.executable, 'tools/train.py', cfg, '--work-dir', str(work_dir), *extra])


def evaluate(cfg, ckpt, work_dir, *extra):
    run([sys.executable, 'tools/test.py', cfg, str(ckpt), '--work-dir', str(work_dir), *extra])
    return json.load(open(osp.join(work_dir, 'test_metrics.json')))['metrics']


def scalars(work_dir):
    files = [osp.join(dp, f) for dp, _, fs in os.walk(work_dir) for f in fs if f == 'scalars.json']
    assert files, f'no scalars.json under {work_dir}'
    return [json.loads(line) for line in open(sorted(files)[-1])]


def test_upernet_train_whole_and_slide_inference(tmp_path):
    cfg = tiny.seg_config(tmp_path)
    train(cfg, tmp_path / 'w')
    logged = scalars(tmp_path / 'w')
    assert any('mIoU' in r for r in logged), 'no validation mIoU during training'
    ckpt = tmp_path / 'w' / 'iter_4.pth'
    whole = evaluate(cfg, ckpt, tmp_path / 't_whole')
    slide_cfg = tiny.seg_config(tmp_path, 'seg_slide.py', model_extra=(
        "test_cfg=dict(_delete_=True, mode='slide', crop_size=(48, 48), stride=(32, 32)),"))
    slide = evaluate(slide_cfg, ckpt, tmp_path / 't_slide')
    for m in (whole, slide):
        assert 0.0 <= m['mIoU'] <= 100.0 and 'aAcc' in m
    assert whole != slide  # really a different inference path


def test_mask_rcnn_train_and_coco_metric(tmp_path):
    cfg = tiny.det_config(tmp_path)
    train(cfg, tmp_path / 'w')
    m = evaluate(cfg, tmp_path / 'w' / 'epoch_1.pth', tmp_path / 't')
    for k in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert k in m and -1.0 <= m[k] <= 1.0, m


@pytest.mark.parametrize('method', ['simmim', 'mae'])
def test_mim_pretrain_then_layer_decay_finetune(tmp_path, method):
    cfg = getattr(tiny, f'{method}_config')(tmp_path)
    train(cfg, tmp_path / 'pre')
    losses = [r['loss'] for r in scalars(tmp_path / 'pre') if 'loss' in r]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    ckpt = tmp_path / 'pre' / 'epoch_2.pth'
    state = torch.load(ckpt, map_location='cpu', weights_only=False)['state_dict']
    assert any(k.startswith('neck.') for k in state) and 'backbone.pos_embed' in state
    ft = tiny.finetune_config(tmp_path, ckpt)
    out = train(ft, tmp_path / 'ft')
    assert f'load backbone. in model from: {ckpt}' in out.stdout + out.stderr
    m = evaluate(ft, tmp_path / 'ft' / 'epoch_2.pth', tmp_path / 't')
    assert 0.0 <= m['accuracy/top1'] <= 100.0


@pytest.mark.parametrize('task', ['seg', 'det', 'simmim', 'mae'])
def test_dist_train_two_gloo_processes(tmp_path, task):
    cfg = getattr(tiny, f'{task}_config')(tmp_path)
    # 2 processes; data generated once by rank 0
    run(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', str(tmp_path / 'w')], retries=1)
    ckpt = {'seg': 'iter_4.pth', 'det': 'epoch_1.pth'}.get(task, 'epoch_2.pth')
    assert osp.isfile(tmp_path / 'w' / ckpt)


@pytest.mark.parametrize('mixer', ['gla', 'gated_deltanet', 'rwkv6', 'hgrn2'])
def test_dense_tasks_with_zoo_mixers(tmp_path, mixer):
    """Issue 17: UperNet and Mask R-CNN train and evaluate with directional mixers in the backbone (bi route)."""
    swap = f"mixer=dict(_delete_=True, type={mixer!r}), scan=dict(type='bi')"
    seg = tiny.seg_config(tmp_path, 'seg.py', backbone_extra=swap)
    train(seg, tmp_path / 'w_seg')
    m = evaluate(seg, tmp_path / 'w_seg' / 'iter_4.pth', tmp_path / 't_seg')
    assert 0.0 <= m['mIoU'] <= 100.0
    det = tiny.det_config(tmp_path, 'det.py', backbone_extra=swap)
    train(det, tmp_path / 'w_det')
    m = evaluate(det, tmp_path / 'w_det' / 'epoch_1.pth', tmp_path / 't_det')
    assert -1.0 <= m['coco/bbox_mAP'] <= 1.0 and -1.0 <= m['coco/segm_mAP'] <= 1.0
