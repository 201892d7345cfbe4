"""Multi-GPU checks of tools/dist_train.sh and tools/dist_test.sh (issue 8), in one call on a host with >= 2 GPUs.

    source tools/device_prelude.sh && python3 tools/benchmarks/dist_gpu.py --out $OUT --deadline 380
    python tools/benchmarks/dist_gpu.py --out /tmp/dist_smoke --smoke     # CPU, gloo, tiny sizes

Steps, in this order (each is skipped when the deadline would be passed; results.json is rewritten after each):
  parity   the default shapes classification config (plain pipeline, 50 iterations, same seed):
           1 process x batch 2b (tools/train.py) vs tools/dist_train.sh 2 x batch b: loss per iteration, top-1
  test     tools/test.py vs tools/dist_test.sh 2 on the 2-process checkpoint, 301 validation images (odd)
  pipes    tools/dist_train.sh 2 for UperNet, Mask R-CNN and SimMIM (shapes configs, small data, few iterations),
           then dist_test.sh 2 vs test.py on the UperNet and Mask R-CNN checkpoints (21 validation images)
  scaling  tools/benchmarks/ddp_scaling.py on 1 and 2 GPUs: LinearViT-S at 224 (ImageNet config), UperNet
           LinearViT-T at 512 (ADE20K config); synthetic batches, bf16
  nnodes   NNODES=2 NODE_RANK=0|1 MASTER_ADDR=127.0.0.1: two launches of dist_train.sh CONFIG 1 on one host
           (one GPU each) form one 2-process job; its loss curve vs the 2-GPU run of `parity`
  repeat   the 2-GPU run of `parity` again: the run-to-run noise floor (fp32 atomics in the kernels)
Writes results.json, parity.png and logs.tar.gz to --out.
"""
import argparse
import json
import os
import os.path as osp
import socket
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # common.py (PYTHONSAFEPATH=1 leaves this folder out)
from common import ROOT, Deadline, describe_env, pyplot, scalars, write_json  # noqa: E402
CFG = osp.join(ROOT, 'configs', 'linear_vit')
PY = sys.executable


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return str(s.getsockname()[1])


def env(**extra):
    e = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), PYTHON=PY,
             PORT=free_port(), OMP_NUM_THREADS='2')
    e.pop('TRITON_INTERPRET', None)
    e.update(extra)
    return e


def sh(name, args, **extra):
    """Run one command, its output to WORK/<name>.log; returns (rc, seconds)."""
    t = time.time()
    with open(osp.join(WORK, f'{name}.log'), 'w') as f:
        rc = subprocess.run(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env(**extra)).returncode
    dt = round(time.time() - t, 1)
    print(f'[{time.time() - T0:5.0f}s] {name}: rc={rc} in {dt}s', flush=True)
    if rc:
        print(open(osp.join(WORK, f'{name}.log')).read()[-3000:], flush=True)
    return rc, dt


def metrics(wd):
    f = osp.join(wd, 'test_metrics.json')
    return json.load(open(f))['metrics'] if osp.isfile(f) else None


def write(name, text):
    path = osp.join(WORK, name)
    with open(path, 'w') as f:
        f.write(text)
    return path


# ---------------------------------------------------------------------------------------------- configs
def sync_bn():
    """BatchNorm layers become SyncBatchNorm in the multi-process runs (MMEngine's ``sync_bn``): the conv stem and
    the UperNet heads use BN, and 2 x b must see the statistics of 1 x 2b. SyncBatchNorm needs CUDA: not in the
    CPU smoke run."""
    import torch
    return "sync_bn = 'torch'\n" if torch.cuda.is_available() else ''


def cls_cfg(name, batch):
    n = 6 if SMOKE else 50
    gen = dict(image_size=48, num_train=128 if SMOKE else 2000, num_val=33 if SMOKE else 301, min_shapes=1,
               max_shapes=1, size_range=[0.3, 0.45], clutter=0.5, seed=0)
    model = ("model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=2, num_heads=2, "
             "mlp_ratio=2.0)), head=dict(in_channels=32))\n") if SMOKE else ''
    return write(f'{name}.py', f"""_base_ = [{osp.join(CFG, 'linear-vit-t_shapes-cls.py')!r}]
R = {osp.join(WORK, 'data', 'cls')!r}
G = {gen!r}
plain = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]  # no random flip: both runs see the same pixels
train_dataloader = dict(batch_size={batch}, num_workers=2, dataset=dict(data_root=R, generate=G, pipeline=plain))
val_dataloader = dict(batch_size=64, num_workers=2, dataset=dict(data_root=R, generate=G))
test_dataloader = val_dataloader
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={n}, val_interval={n})
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end={n // 5}),
                   dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=False, begin={n // 5}, end={n})]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval={n}))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
custom_hooks = [dict(type='vla_mm.GlobalMeanLogHook')]  # log the mean over ranks (comparable with 1 x 2b)
{sync_bn()}{model}""")


def seg_cfg():
    n = 2 if SMOKE else 30
    size = 64 if SMOKE else 128
    model = ("model = dict(data_preprocessor=dict(size=(64, 64)), backbone=dict(arch=dict(_delete_=True, "
             "embed_dims=32, num_layers=4, num_heads=2), img_size=64, out_indices=(0, 1, 2, 3)), "
             "neck=dict(in_channels=32))\ncrop_size = (64, 64)\n"
             "train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=False),"
             " dict(type='PackSegInputs')]\n"
             "train_dataloader = dict(dataset=dict(pipeline=train_pipeline))\n") if SMOKE else ''
    return write('seg.py', f"""_base_ = [{osp.join(CFG, 'upernet_linear-vit-t_shapes-seg.py')!r}]
R = {osp.join(WORK, 'data', 'seg')!r}
G = dict(image_size={size}, num_train={16 if SMOKE else 64}, num_val=21, seed=0)
train_dataloader = dict(batch_size={2 if SMOKE else 8}, num_workers=2, dataset=dict(data_root=R, generate=G))
val_dataloader = dict(num_workers=2, dataset=dict(data_root=R, generate=G))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={n}, val_interval={n})
param_scheduler = [dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end={n})]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={n}, max_keep_ckpts=1))
{sync_bn()}{model}""")


def det_cfg():
    size = 64 if SMOKE else 128
    r = osp.join(WORK, 'data', 'det')
    model = """model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=4, num_heads=2),
    img_size=64, out_indices=(0, 1, 2, 3)),
    neck=[dict(type='vla_mm.SimpleFeaturePyramid', in_channels=32, out_channels=16, patch_size=4),
          dict(type='FPN', in_channels=[16, 16, 16, 16], out_channels=16, num_outs=5)],
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=16), bbox_head=dict(in_channels=16),
                  mask_roi_extractor=dict(out_channels=16), mask_head=dict(in_channels=16)))
""" if SMOKE else ''
    return write('det.py', f"""_base_ = [{osp.join(CFG, 'mask-rcnn_linear-vit-t_fpn_shapes-det.py')!r}]
R = {r!r}
G = dict(image_size={size}, num_train={16 if SMOKE else 64}, num_val=21, seed=0)
train_dataloader = dict(batch_size={2 if SMOKE else 8}, num_workers=2, dataset=dict(data_root=R, generate=G))
val_dataloader = dict(batch_size=4, num_workers=2, dataset=dict(data_root=R, generate=G))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file={osp.join(r, 'annotations', 'instances_val2017.json')!r})
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, max_keep_ckpts=1))
{model}""")


def mim_cfg():
    model = ("model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=2, num_heads=2, "
             "mlp_ratio=2.0)), neck=dict(in_channels=32))\n") if SMOKE else ''
    return write('simmim.py', f"""_base_ = [{osp.join(CFG, 'simmim_linear-vit-t_shapes.py')!r}]
R = {osp.join(WORK, 'data', 'mim')!r}
G = dict(image_size=32, num_train={32 if SMOKE else 512}, num_val=21, seed=0)
train_dataloader = dict(batch_size={4 if SMOKE else 64}, num_workers=2, dataset=dict(data_root=R, generate=G))
train_cfg = dict(max_epochs=1)
param_scheduler = []
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=1))
{model}""")


# ---------------------------------------------------------------------------------------------- steps
def step_parity(res):
    one, two = cls_cfg('cls_one', 32 if SMOKE else 128), cls_cfg('cls_two', 16 if SMOKE else 64)
    rc1, t1 = sh('parity_1x2b', [PY, 'tools/train.py', one, '--work-dir', osp.join(WORK, 'one')],
                 CUDA_VISIBLE_DEVICES='0')
    rc2, t2 = sh('parity_2xb', ['bash', 'tools/dist_train.sh', two, '2', '--work-dir', osp.join(WORK, 'two')])
    a, b = scalars(osp.join(WORK, 'one')), scalars(osp.join(WORK, 'two'))
    la = [r['loss'] for r in a if 'loss' in r]
    lb = [r['loss'] for r in b if 'loss' in r]
    diff = [abs(x - y) for x, y in zip(la, lb)]
    acc = lambda s: [r['accuracy/top1'] for r in s if 'accuracy/top1' in r]  # noqa: E731
    weights = None
    ca, cb = ckpt_of(osp.join(WORK, 'one')), ckpt_of(osp.join(WORK, 'two'))
    if ca and cb:
        import torch
        sa, sb = (torch.load(c, map_location='cpu', weights_only=False)['state_dict'] for c in (ca, cb))
        rel = {k: float((sa[k].float() - sb[k].float()).norm() / sa[k].float().norm().clamp_min(1e-12))
               for k in sa if sa[k].is_floating_point()}
        worst = max(rel, key=rel.get)
        weights = dict(max_rel_diff=rel[worst], worst_tensor=worst, median_rel_diff=sorted(rel.values())[len(rel) // 2])
    res['parity'] = dict(rc=[rc1, rc2], seconds=[t1, t2], final_weights=weights, loss_1x2b=la, loss_2xb=lb,
                         max_abs_loss_diff=max(diff) if diff else None,
                         max_rel_loss_diff=max(d / max(abs(x), 1e-8) for d, x in zip(diff, la)) if diff else None,
                         top1_1x2b=acc(a), top1_2xb=acc(b))


def ckpt_of(wd):
    f = osp.join(wd, 'last_checkpoint')
    return open(f).read().strip() if osp.isfile(f) else None


def test_pair(name, cfg, ckpt):
    rc1, _ = sh(f'{name}_test', [PY, 'tools/test.py', cfg, ckpt, '--work-dir', osp.join(WORK, f'{name}_t1')],
                CUDA_VISIBLE_DEVICES='0')
    rc2, _ = sh(f'{name}_dist_test', ['bash', 'tools/dist_test.sh', cfg, ckpt, '2', '--work-dir',
                                      osp.join(WORK, f'{name}_t2')])
    m1, m2 = metrics(osp.join(WORK, f'{name}_t1')), metrics(osp.join(WORK, f'{name}_t2'))
    return dict(rc=[rc1, rc2], test_py=m1, dist_test_2=m2, identical=m1 == m2 and m1 is not None)


def step_test(res):
    ck = ckpt_of(osp.join(WORK, 'two'))
    res['test'] = test_pair('cls', osp.join(WORK, 'cls_two.py'), ck) if ck else dict(error='no checkpoint')


def step_pipes(res):
    out = res.setdefault('pipes', {})
    for name, cfg, key in (('seg', seg_cfg(), 'mIoU'), ('det', det_cfg(), 'coco/bbox_mAP'),
                           ('simmim', mim_cfg(), 'loss')):
        if DL.expired(60):
            out[name] = dict(skipped='deadline')
            continue
        wd = osp.join(WORK, name)
        rc, t = sh(f'{name}_2gpu', ['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', wd])
        s = scalars(wd)
        out[name] = dict(rc=rc, seconds=t, iterations=max([r.get('step', 0) for r in s if 'loss' in r], default=0),
                         first_loss=next((r['loss'] for r in s if 'loss' in r), None),
                         last_loss=[r['loss'] for r in s if 'loss' in r][-1:] or None,
                         metric={key: [r[key] for r in s if key in r][-1:] or None})
        write_results(res)
    for name in ('seg', 'det'):
        ck = ckpt_of(osp.join(WORK, name))
        if ck and not DL.expired(50):
            out[name]['test'] = test_pair(name, osp.join(WORK, f'{name}.py'), ck)
            write_results(res)


def step_scaling(res):
    out = res.setdefault('scaling', [])
    js = osp.join(WORK, 'scaling.jsonl')
    runs = [('vit-s_224', osp.join(CFG, 'linear-vit-s_8xb128_in1k.py'), 8 if SMOKE else 64, 32 if SMOKE else 224,
             ['model.backbone.arch={"_delete_": True, "embed_dims": 32, "num_layers": 2, "num_heads": 2}', 'model.head.in_channels=32',
              'model.backbone.img_size=32'] if SMOKE else []),
            ('upernet-t_512', osp.join(CFG, 'upernet_linear-vit-t_4xb4-160k_ade20k-512x512.py'), 2 if SMOKE else 8,
             64 if SMOKE else 512, ['model.backbone.arch={"_delete_": True, "embed_dims": 32, "num_layers": 4, "num_heads": 2}',
                                    'model.backbone.img_size=64', 'model.backbone.out_indices=(0, 1, 2, 3)',
                                    'model.neck.in_channels=32',
                                    'model.data_preprocessor.size=(64, 64)'] if SMOKE else [])]
    for name, cfg, b, size, opts in runs:
        for world in (1, 2):
            if DL.expired(40):
                out.append(dict(name=name, world=world, skipped='deadline'))
                continue
            args = [PY, '-m', 'torch.distributed.run', f'--nproc_per_node={world}', '--master_port', free_port(),
                    'tools/benchmarks/ddp_scaling.py', cfg, '--batch', str(b), '--size', str(size), '--json', js]
            if SMOKE:
                args += ['--warmup', '1', '--iters', '2']
            if opts:
                args += ['--cfg-options', *opts]
            rc, _ = sh(f'scaling_{name}_{world}', args, NCCL_NVLS_ENABLE='0', TORCH_SYMM_MEM_DISABLE_MULTICAST='1',
                       NVSHMEM_DISABLE_NVLS='1')
            recs = [json.loads(line) for line in open(js)] if osp.isfile(js) else []
            rec = next((r for r in reversed(recs) if r['world'] == world and osp.join(ROOT, r['config']) == cfg),
                       None)
            out.append({**(rec or dict(world=world)), 'name': name, 'rc': rc})
            write_results(res)
    for name in {r['name'] for r in out}:
        ips = {r['world']: r.get('images_per_s') for r in out if r['name'] == name}
        if ips.get(1) and ips.get(2):
            res.setdefault('scaling_efficiency_2gpu', {})[name] = round(ips[2] / (2 * ips[1]), 3)


def step_nnodes(res):
    cfg = osp.join(WORK, 'cls_two.py')
    port = free_port()
    procs, logs = [], []
    t = time.time()
    for node in (0, 1):
        f = open(osp.join(WORK, f'nnodes_{node}.log'), 'w')
        logs.append(f)
        procs.append(subprocess.Popen(['bash', 'tools/dist_train.sh', cfg, '1', '--work-dir', osp.join(WORK, 'nn')],
                                      cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                      env=env(NNODES='2', NODE_RANK=str(node), MASTER_ADDR='127.0.0.1', PORT=port,
                                              CUDA_VISIBLE_DEVICES=str(node))))
    rcs = [p.wait() for p in procs]
    for f in logs:
        f.close()
    print(f'[{time.time() - T0:5.0f}s] nnodes: rc={rcs} in {time.time() - t:.1f}s', flush=True)
    lb = [r['loss'] for r in scalars(osp.join(WORK, 'two')) if 'loss' in r]
    ln = [r['loss'] for r in scalars(osp.join(WORK, 'nn')) if 'loss' in r]
    diff = [abs(x - y) for x, y in zip(lb, ln)]
    res['nnodes'] = dict(rc=rcs, seconds=round(time.time() - t, 1), loss=ln,
                         max_abs_loss_diff_vs_2gpu=max(diff) if diff else None,
                         top1=[r['accuracy/top1'] for r in scalars(osp.join(WORK, 'nn')) if 'accuracy/top1' in r])


def step_repeat(res):
    """The noise floor of the parity check: the same 2-process run again. The linear-attention kernels reduce
    over sequence blocks with fp32 atomics, so GPU runs are not bitwise repeatable; with training's amplification
    this is the scale below which 1 x 2b vs 2 x b differences mean nothing."""
    two = osp.join(WORK, 'cls_two.py')
    rc, t = sh('repeat_2xb', ['bash', 'tools/dist_train.sh', two, '2', '--work-dir', osp.join(WORK, 'two_again')])
    lb = [r['loss'] for r in scalars(osp.join(WORK, 'two')) if 'loss' in r]
    lr = [r['loss'] for r in scalars(osp.join(WORK, 'two_again')) if 'loss' in r]
    diff = [abs(x - y) for x, y in zip(lb, lr)]
    res['repeat'] = dict(rc=rc, seconds=t, loss=lr, max_abs_loss_diff_vs_2gpu=max(diff) if diff else None)


def write_results(res):
    res['wall_s'] = round(time.time() - T0, 1)
    write_json(osp.join(OUT, 'results.json'), res)


def plot(res):
    plt = pyplot()
    if plt is None:
        print('parity.png skipped: matplotlib is not installed', flush=True)
        return
    p = res.get('parity', {})
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for k, lab in (('loss_1x2b', '1 GPU x batch 2b'), ('loss_2xb', 'dist_train.sh: 2 GPUs x batch b')):
        if p.get(k):
            ax[0].plot(range(1, len(p[k]) + 1), p[k], label=lab)
    for k, lab in (('nnodes', 'NNODES=2 x 1 GPU (one host)'), ('repeat', '2 GPUs x batch b, again')):
        if res.get(k, {}).get('loss'):
            ax[0].plot(range(1, len(res[k]['loss']) + 1), res[k]['loss'], '--', label=lab)
    ax[0].set(xlabel='iteration', ylabel='training loss', title='classification, same seed')
    ax[0].legend()
    if p.get('loss_1x2b') and p.get('loss_2xb'):
        ax[1].semilogy([abs(x - y) + 1e-12 for x, y in zip(p['loss_1x2b'], p['loss_2xb'])])
    ax[1].set(xlabel='iteration', ylabel='|loss difference|', title='1 x 2b vs 2 x b')
    fig.tight_layout()
    fig.savefig(osp.join(OUT, 'parity.png'), dpi=80)


def main():
    global WORK, OUT, SMOKE, DL, T0
    p = argparse.ArgumentParser()
    p.add_argument('--out', required=True)
    p.add_argument('--work', default=None)
    p.add_argument('--smoke', action='store_true')
    p.add_argument('--deadline', type=float, default=380.0, help='seconds for the whole call')
    p.add_argument('--steps', default='parity,test,pipes,scaling,nnodes,repeat')
    a = p.parse_args()
    T0, SMOKE = time.time(), a.smoke
    DL = Deadline(a.deadline, T0)
    OUT = osp.abspath(a.out)
    WORK = osp.abspath(a.work or osp.join(ROOT, 'work_dirs', 'dist_gpu' + ('_smoke' if a.smoke else '')))
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(WORK, exist_ok=True)
    import torch
    res = dict(device=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or 'cpu (gloo)',
               torch=torch.__version__, env=describe_env())
    steps = dict(parity=step_parity, test=step_test, pipes=step_pipes, scaling=step_scaling, nnodes=step_nnodes,
                 repeat=step_repeat)
    for s in a.steps.split(','):
        if DL.expired(45):
            res.setdefault('skipped', []).append(s)
            continue
        try:
            steps[s](res)
        except Exception as e:  # one failing step must not lose the others' results
            res[s + '_error'] = repr(e)
            print(f'{s} failed: {e!r}', flush=True)
        write_results(res)
    try:
        plot(res)
    except Exception as e:
        print(f'plot failed: {e!r}', flush=True)
    write_results(res)
    with tarfile.open(osp.join(OUT, 'logs.tar.gz'), 'w:gz') as tar:
        for dp, _, fs in os.walk(WORK):
            if osp.join(WORK, 'data') in dp:
                continue
            for fn in fs:
                if fn.endswith(('.log', '.json', '.py', '.jsonl')):
                    full = osp.join(dp, fn)
                    tar.add(full, arcname=osp.relpath(full, WORK))
    print(json.dumps({k: v for k, v in res.items() if k != 'parity'}, indent=1)[:6000], flush=True)


WORK = OUT = None
SMOKE = False
DL = Deadline(380.0)
T0 = 0.0

if __name__ == '__main__':
    main()
