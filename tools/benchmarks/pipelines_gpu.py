"""GPU run of the four pipelines on the synthetic shapes data, concurrently on one GPU, each time-bounded.

    source tools/device_prelude.sh && python3 tools/benchmarks/pipelines_gpu.py --out $OUT
    python tools/benchmarks/pipelines_gpu.py --out /tmp/smoke --smoke        # CPU, tiny sizes, 1-4 iterations

Three task processes run at the same time (separate processes, one GPU):
  seg  UperNet + LinearViT + SimpleFeaturePyramid   (configs/linear_vit/upernet_linear-vit-t_shapes-seg.py)
  det  Mask R-CNN + LinearViT + SFP + FPN           (configs/linear_vit/mask-rcnn_linear-vit-t_fpn_shapes-det.py)
  mim  SimMIM and MAE pre-training (concurrently), then fine-tuning on shapes classification with layer-wise lr
       decay from each checkpoint and from scratch, equal budgets (linear-vit-t_simmim-pre_shapes-cls-ft.py)
Every training goes through tools/train.py with a config derived from the real one (written to the work dir)
and a TimeBudgetHook: after a calibration window it measures the time per iteration and, if the planned
schedule does not fit the task's budget, shortens it (max iterations / epochs and the lr schedule together), so
each run ends with its own final validation inside the budget.

Writes to --out (at most 8 files): summary.json (metrics, times, device), curves.png (loss/metric curves of every
run), seg.png, det.png, mim.png (predictions on validation images), logs.tar.gz (logs + scalars.json + configs).
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # common.py (PYTHONSAFEPATH=1 leaves this folder out)
from common import ROOT, Deadline, describe_env, pyplot, scalars, write_json  # noqa: E402
CFG = osp.join(ROOT, 'configs', 'linear_vit')

# ----------------------------------------------------------------------------------------------- derived configs
def droot(task):
    """Private data roots under the work dir (never touch data/shapes of other jobs on the same machine)."""
    return osp.join(WORK, 'data', 'cls' if task in ('mim', 'cls') else task)


def header(base, budget, task, lr_plan=None):
    """Derived-config preamble: private data root, vla_mm.TimeBudgetHook (with ``lr_plan`` it owns the lr: the
    config's lr schedulers are dropped)."""
    r = droot(task)
    roots = f"work_data_root = {r!r}\n"
    if task == 'det':
        roots += (f"val_evaluator = dict(ann_file={osp.join(r, 'annotations', 'instances_val2017.json')!r})\n"
                  "test_evaluator = val_evaluator\n")
    plan = '' if lr_plan is None else f', lr_plan={lr_plan!r}'
    return (f"_base_ = [{base!r}]\n" + roots +
            "custom_hooks = [dict(type='vla_mm.DeterministicResumeHook'), "
            f"dict(type='vla_mm.TimeBudgetHook', seconds={budget}{plan})]\n"
            + ('param_scheduler = []\n' if lr_plan is not None else ''))


def seg_cfg(smoke, budget):
    if smoke:
        return header(osp.join(CFG, 'upernet_linear-vit-t_shapes-seg.py'), budget, 'seg') + '''
shapes_generate = dict(image_size=64, num_train=8, num_val=4, seed=0)
crop_size = (64, 64)
train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=False),
                  dict(type='PackSegInputs')]
model = dict(data_preprocessor=dict(size=crop_size),
             backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=4, num_heads=2), img_size=64,
                           out_indices=(0, 1, 2, 3)),
             neck=dict(in_channels=32))
train_dataloader = dict(batch_size=2, num_workers=0, dataset=dict(data_root=work_data_root, generate=shapes_generate, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, dataset=dict(data_root=work_data_root, generate=shapes_generate))
test_dataloader = val_dataloader
param_scheduler = [dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=2)]
train_cfg = dict(max_iters=2, val_interval=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, max_keep_ckpts=1))
'''
    return header(osp.join(CFG, 'upernet_linear-vit-t_shapes-seg.py'), budget, 'seg') + '''
shapes_generate = dict(image_size=128, num_train=2000, num_val=100, seed=0)
train_dataloader = dict(batch_size=16, num_workers=4, dataset=dict(data_root=work_data_root, generate=shapes_generate))
val_dataloader = dict(num_workers=2, dataset=dict(data_root=work_data_root, generate=shapes_generate))
test_dataloader = val_dataloader
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=200),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=200, end=6000),
]
train_cfg = dict(max_iters=6000, val_interval=1000)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=1000, max_keep_ckpts=1))
'''


DET_LR_PLAN = dict(warmup=100, decay='cosine', min_ratio=0.01)


def det_pre_cfg(smoke, budget):
    """Classification pre-training of the det backbone (configs/linear_vit/linear-vit-t-p4_shapes-cls.py)."""
    base = osp.join(CFG, 'linear-vit-t-p4_shapes-cls.py')
    plan = dict(warmup=50 if not smoke else 1, decay='cosine', min_ratio=0.01)
    if smoke:
        return header(base, budget, 'det_pre', plan) + '''
shapes_generate = dict(image_size=32, num_train=32, num_val=16, seed=0)
model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=4, num_heads=2), img_size=32))
model.update(head=dict(in_channels=32))
train_dataloader = dict(batch_size=16, num_workers=0, dataset=dict(data_root=work_data_root, generate=shapes_generate))
val_dataloader = dict(num_workers=0, dataset=dict(data_root=work_data_root, generate=shapes_generate))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, save_best=None))
'''
    return header(base, budget, 'det_pre', plan) + '''
train_dataloader = dict(batch_size=128, num_workers=6, persistent_workers=True, dataset=dict(data_root=work_data_root))
val_dataloader = dict(num_workers=2, dataset=dict(data_root=work_data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=40, val_interval=5)
default_hooks = dict(checkpoint=dict(interval=40, max_keep_ckpts=1, save_best=None, save_last=True))
'''


def det_cfg(smoke, budget, init=None):
    base = osp.join(CFG, 'mask-rcnn_linear-vit-t_fpn_shapes-det.py')
    text = header(base, budget, 'det', DET_LR_PLAN if not smoke else dict(warmup=1))
    # one `model = ...` per derived file: a second top-level assignment would replace the first
    init = f"init_cfg=dict(type='Pretrained', checkpoint={init!r}, prefix='backbone.')" if init else ''
    if smoke:
        return text + '''
shapes_generate = dict(image_size=64, num_train=8, num_val=4, seed=0)
model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=32, num_layers=4, num_heads=2), img_size=64,
                           out_indices=(0, 1, 2, 3), INIT),
             neck=[dict(type='vla_mm.SimpleFeaturePyramid', in_channels=32, out_channels=16, patch_size=4),
                   dict(type='FPN', in_channels=[16, 16, 16, 16], out_channels=16, num_outs=5)],
             rpn_head=dict(in_channels=16, feat_channels=16),
             roi_head=dict(bbox_roi_extractor=dict(out_channels=16), bbox_head=dict(in_channels=16),
                           mask_roi_extractor=dict(out_channels=16), mask_head=dict(in_channels=16)))
train_dataloader = dict(batch_size=4, num_workers=0, dataset=dict(data_root=work_data_root, generate=shapes_generate))
val_dataloader = dict(batch_size=2, num_workers=0, dataset=dict(data_root=work_data_root, generate=shapes_generate))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(logger=dict(interval=1))
'''.replace('INIT', init)
    if init:
        text += f"model = dict(backbone=dict({init}))\n"
    return text + '''
shapes_generate = dict(image_size=128, num_train=2000, num_val=100, seed=0)
train_dataloader = dict(batch_size=16, num_workers=6, persistent_workers=True,
                        dataset=dict(data_root=work_data_root, generate=shapes_generate))
val_dataloader = dict(batch_size=16, num_workers=2, dataset=dict(data_root=work_data_root, generate=shapes_generate))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=3e-4))
train_cfg = dict(max_epochs=60, val_interval=2)  # 100 validation scenes take ~3 s: an AP curve, not one point
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=10, max_keep_ckpts=1))
'''


def pre_cfg(method, smoke, budget):
    base = osp.join(CFG, f'{method}_linear-vit-t_shapes.py')
    if smoke:
        return header(base, budget, 'mim') + '''
shapes_generate = dict(image_size=32, num_train=32, num_val=16, seed=0)
train_dataloader = dict(batch_size=16, num_workers=0, dataset=dict(data_root=work_data_root, generate=shapes_generate))
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=2,
                        convert_to_iter_based=True)]
train_cfg = dict(max_epochs=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
'''
    return header(base, budget, 'mim') + '''
train_dataloader = dict(batch_size=128, num_workers=3, dataset=dict(data_root=work_data_root))
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5, end=150, convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=150)
default_hooks = dict(logger=dict(interval=23), checkpoint=dict(interval=50, max_keep_ckpts=1))
'''


def ft_cfg(ckpt, decay, smoke, budget):
    base = osp.join(CFG, 'linear-vit-t_simmim-pre_shapes-cls-ft.py')
    init = 'None' if ckpt is None else f"dict(type='Pretrained', checkpoint={ckpt!r}, prefix='backbone.')"
    text = header(base, budget, 'cls') + f'''
model = dict(backbone=dict(init_cfg={init}))
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate={decay}))
'''
    if smoke:
        return text + '''
shapes_generate = dict(image_size=32, num_train=32, num_val=16, seed=0)
train_dataloader = dict(batch_size=16, num_workers=0, dataset=dict(data_root=work_data_root, generate=shapes_generate, indices=16))
val_dataloader = dict(num_workers=0, dataset=dict(data_root=work_data_root, generate=shapes_generate))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(max_keep_ckpts=1, save_best=None))
'''
    return text + '''
train_dataloader = dict(num_workers=2, dataset=dict(data_root=work_data_root))
val_dataloader = dict(num_workers=2, dataset=dict(data_root=work_data_root))
test_dataloader = val_dataloader
default_hooks = dict(checkpoint=dict(max_keep_ckpts=1, save_best=None))
'''


# ----------------------------------------------------------------------------------------------- helpers
def env():
    e = dict(os.environ)
    e['PYTHONPATH'] = os.pathsep.join([WORK, ROOT] + [p for p in e.get('PYTHONPATH', '').split(os.pathsep) if p])
    e.setdefault('OMP_NUM_THREADS', '2')
    return e


def train(name, text, log):
    cfg = osp.join(WORK, f'{name}.py')
    with open(cfg, 'w') as f:
        f.write(text)
    wd = osp.join(WORK, name)
    t = time.time()
    with open(osp.join(WORK, f'{name}.stdout'), 'w') as out:
        rc = subprocess.call([sys.executable, osp.join(ROOT, 'tools/train.py'), cfg, '--work-dir', wd],
                             cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT)
    log(f'{name}: tools/train.py rc={rc} in {time.time() - t:.0f}s')
    ckpt = None
    last = osp.join(wd, 'last_checkpoint')
    if osp.isfile(last):
        ckpt = open(last).read().strip()
    return cfg, wd, ckpt, rc


def final_metric(wd, key):
    vals = [r[key] for r in scalars(wd) if key in r]
    return vals[-1] if vals else None


def last_step(wd, key):
    return max([r.get('step', 0) for r in scalars(wd) if key in r] or [0])


def palette(n):
    import numpy as np
    rng = np.random.default_rng(3)
    p = rng.integers(40, 255, size=(n, 3)).astype(np.uint8)
    p[0] = (0, 0, 0)
    return p


def grid(rows, scale=2):
    """rows: list of lists of HxWx3 uint8 (RGB) -> one image."""
    import cv2
    import numpy as np
    rows = [np.concatenate([cv2.resize(im, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
                            for im in r], axis=1) for r in rows]
    w = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, w - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(rows, axis=0)


def save_png(path, rgb):
    import cv2
    cv2.imwrite(path, rgb[..., ::-1].copy())


# ----------------------------------------------------------------------------------------------- tasks
def task_seg(smoke, budget, log):
    cfg, wd, ckpt, rc = train('seg', seg_cfg(smoke, budget), log)
    res = dict(rc=rc, mIoU=final_metric(wd, 'mIoU'), aAcc=final_metric(wd, 'aAcc'), iters=last_step(wd, 'loss'))
    if ckpt:
        try:
            import cv2
            import numpy as np
            import vla_mm  # noqa: F401
            from mmseg.apis import inference_model, init_model
            from mmengine.config import Config
            c = Config.fromfile(cfg)
            model = init_model(c, ckpt, device=DEVICE)
            root = droot('seg')
            names = sorted(os.listdir(osp.join(root, 'images/validation')))[:6]
            pal = palette(7)
            rows = []
            for n in names:
                img = cv2.imread(osp.join(root, 'images/validation', n))
                gt = cv2.imread(osp.join(root, 'annotations/validation', n.replace('.jpg', '.png')), 0)
                pred = inference_model(model, img).pred_sem_seg.data[0].cpu().numpy()
                rows.append([img[..., ::-1], pal[gt], pal[pred]])
            save_png(osp.join(OUT, 'seg.png'), grid(rows))
        except Exception as e:  # a picture must not lose the numbers
            log(f'seg picture failed: {e!r}')
    return res


def task_det(smoke, budget, log):
    res, init = {}, None
    if DET_INIT == 'cls':  # classification pre-training of the backbone first (the ImageNet step of real configs)
        t = time.time()
        pre_budget = 60 if smoke else min(110.0, 0.22 * budget)
        _, pwd, init, prc = train('det_pre', det_pre_cfg(smoke, pre_budget), log)
        accs = [r['accuracy/top1'] for r in scalars(pwd) if 'accuracy/top1' in r]
        res['pretrain'] = dict(rc=prc, top1=accs[-1] if accs else None, epochs=len(accs),
                               iters=last_step(pwd, 'loss'), seconds=round(time.time() - t, 1))
        budget = budget - (time.time() - t)
    cfg, wd, ckpt, rc = train('det', det_cfg(smoke, budget, init), log)
    res.update(rc=rc, init=DET_INIT, iters=last_step(wd, 'loss'))
    for k in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75', 'coco/segm_mAP', 'coco/segm_mAP_50',
              'coco/segm_mAP_75'):
        res[k] = final_metric(wd, k)
    if ckpt:
        try:
            import cv2
            import numpy as np
            import vla_mm  # noqa: F401
            from mmdet.apis import inference_detector, init_detector
            from mmengine.config import Config
            c = Config.fromfile(cfg)
            model = init_detector(c, ckpt, device=DEVICE)
            root = droot('det')
            names = sorted(os.listdir(osp.join(root, 'val2017')))[:6]
            pal = palette(8)[1:]
            rows = []
            for n in names:
                img = cv2.imread(osp.join(root, 'val2017', n))
                r = inference_detector(model, img).pred_instances
                keep = r.scores > 0.5
                over = img[..., ::-1].copy()
                boxes = r.bboxes[keep].cpu().numpy().astype(int)
                labels = r.labels[keep].cpu().numpy()
                masks = r.masks[keep].cpu().numpy() if 'masks' in r else np.zeros((0, ) + img.shape[:2], bool)
                for m, lab in zip(masks, labels):
                    over[m] = (0.5 * over[m] + 0.5 * pal[lab % len(pal)]).astype(np.uint8)
                for b, lab in zip(boxes, labels):
                    cv2.rectangle(over, (b[0], b[1]), (b[2], b[3]), tuple(int(v) for v in pal[lab % len(pal)]), 1)
                rows.append([img[..., ::-1], over])
            save_png(osp.join(OUT, 'det.png'), grid(rows))
        except Exception as e:
            log(f'det picture failed: {e!r}')
    return res


def task_mim(smoke, budget, log):
    from concurrent.futures import ThreadPoolExecutor
    pre_budget = budget * 0.5
    ft_budget = budget * 0.4
    with ThreadPoolExecutor(4) as ex:
        methods = ('simmim', ) if LEAN else ('simmim', 'mae')
        pre = {m: ex.submit(train, f'{m}_pre', pre_cfg(m, smoke, pre_budget), log) for m in methods}
        pre = {m: f.result() for m, f in pre.items()}
        runs = dict(ft_simmim=(pre['simmim'][2], 0.75), scratch=(None, 1.0))
        if not LEAN:
            runs.update(ft_mae=(pre['mae'][2], 0.75), scratch_ld=(None, 0.75))
        runs = {k: v for k, v in runs.items() if k.startswith('scratch') or v[0]}
        fts = {k: ex.submit(train, k, ft_cfg(ck, d, smoke, ft_budget), log) for k, (ck, d) in runs.items()}
        fts = {k: f.result() for k, f in fts.items()}
    res = {}
    for m, (_, wd, ckpt, rc) in pre.items():
        losses = [r['loss'] for r in scalars(wd) if 'loss' in r]
        res[f'{m}_pretrain'] = dict(rc=rc, first_loss=losses[0] if losses else None,
                                    last_loss=losses[-1] if losses else None, iters=last_step(wd, 'loss'))
    for k, (_, wd, _, rc) in fts.items():
        accs = [r['accuracy/top1'] for r in scalars(wd) if 'accuracy/top1' in r]
        res[k] = dict(rc=rc, final_top1=accs[-1] if accs else None, best_top1=max(accs) if accs else None,
                      epochs=len(accs), layer_decay=runs[k][1])
    ckpt = pre['simmim'][2]
    if ckpt:
        try:
            import cv2
            import numpy as np
            import torch
            import vla_mm  # noqa: F401
            from mmengine.config import Config
            from mmengine.registry import DefaultScope, MODELS
            from mmengine.runner import load_checkpoint
            c = Config.fromfile(pre['simmim'][0])
            with DefaultScope.overwrite_default_scope('mmpretrain'):
                model = MODELS.build(c.model)
            load_checkpoint(model, ckpt, map_location='cpu')
            model = model.to(DEVICE).eval()
            from mmpretrain.datasets.transforms import SimMIMMaskGenerator
            root = osp.join(droot('mim'), 'val')
            files = [l.split()[0] for l in open(osp.join(droot('mim'), 'meta/val.txt'))][::75][:8]
            size = cv2.imread(osp.join(root, files[0])).shape[0]  # the data's image size (32, 48, ...)
            gen = SimMIMMaskGenerator(input_size=size, mask_patch_size=8, model_patch_size=4, mask_ratio=0.6)
            rows = []
            for fn in files:
                img = cv2.imread(osp.join(root, fn))[..., ::-1].copy()
                x = torch.from_numpy(img).permute(2, 0, 1)[None].float().to(DEVICE) / 127.5 - 1
                mask = torch.from_numpy(gen({})['mask'])[None].to(DEVICE)
                with torch.no_grad():
                    rec = model.neck(model.backbone(x, mask)[0])
                m = mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[0, :, :, None].cpu().numpy() > 0
                rec = ((rec[0].permute(1, 2, 0).cpu().numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
                masked = np.where(m, 127, img).astype(np.uint8)
                filled = np.where(m, rec, img).astype(np.uint8)
                rows.append([img, masked, filled])
            save_png(osp.join(OUT, 'mim.png'), grid(rows, scale=4))
        except Exception as e:
            log(f'mim picture failed: {e!r}')
    return res


# ----------------------------------------------------------------------------------------------- parent
def curves(tasks):
    """curves.png: two panels (training loss, validation metric) per task in ``tasks`` whose logs are under WORK."""
    plt = pyplot()
    if plt is None:
        print('curves.png skipped: matplotlib is not installed', flush=True)
        return
    panels = dict(seg=[('seg', 'loss', 'UperNet train loss'), ('seg', 'mIoU', 'UperNet val mIoU')],
                  det=[('det', 'loss', 'Mask R-CNN train loss'), ('det', 'coco/bbox_mAP', 'Mask R-CNN val AP')],
                  mim=[(('simmim_pre', 'mae_pre'), 'loss', 'MIM pre-training loss'),
                       (('ft_simmim', 'ft_mae', 'scratch_ld', 'scratch'), 'accuracy/top1',
                        'fine-tune val top-1 (600 labels)')])
    tasks = [t for t in ('seg', 'det', 'mim') if t in tasks]
    if not tasks:
        return
    fig, axes = plt.subplots(2, len(tasks), figsize=(5 * len(tasks), 8), squeeze=False)  # a column per task
    for ax, (names, key, title) in zip(axes.T.flat, [pan for t in tasks for pan in panels[t]]):
        names = names if isinstance(names, tuple) else (names, )
        for n in names:
            logged = scalars(osp.join(WORK, n))
            rows = [r for r in logged if key in r]
            if not rows:
                continue
            xs = [r.get('step', i) for i, r in enumerate(rows)]
            ax.plot(xs, [r[key] for r in rows], label=n, marker='.' if len(rows) < 40 else None)
            if n == 'det':
                segm = [r for r in logged if 'coco/segm_mAP' in r]
                if segm and key == 'coco/bbox_mAP':
                    ax.plot([r.get('step', i) for i, r in enumerate(segm)], [r['coco/segm_mAP'] for r in segm],
                            label='det segm', marker='.')
        ax.set_title(title)
        ax.set_xlabel('epoch' if 'accuracy' in key or 'coco' in key else 'iteration (or step)')
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(osp.join(OUT, 'curves.png'), dpi=80)


def main():
    global WORK, OUT, DEVICE
    p = argparse.ArgumentParser()
    p.add_argument('--out', required=True)
    p.add_argument('--work', default=None, help='work dir (default: work_dirs/pipelines_gpu[_smoke])')
    p.add_argument('--smoke', action='store_true', help='tiny sizes on CPU, a few iterations')
    p.add_argument('--deadline', type=float, default=600.0,
                   help='seconds for this call (all its tasks together; one task per call gets the GPU to itself)')
    p.add_argument('--task', choices=['seg', 'det', 'mim'], help='(internal) run one task')
    p.add_argument('--budget', type=float, default=300.0)
    p.add_argument('--lean', action='store_true', help='SimMIM only (no MAE), one scratch baseline')
    p.add_argument('--tasks', default='seg,det,mim', help='which tasks this call runs (comma-separated)')
    p.add_argument('--det-init', choices=['cls', 'scratch'], default='cls',
                   help='Mask R-CNN backbone: classification pre-training on the shapes first (default), or scratch')
    p.add_argument('--replot', action='store_true',
                   help='only draw curves.png for --tasks from the logs already under --work (e.g. several calls\' '
                        'logs.tar.gz unpacked into one folder)')
    a = p.parse_args()
    global LEAN, DET_INIT
    LEAN, DET_INIT = a.lean, a.det_init
    OUT = osp.abspath(a.out)
    WORK = osp.abspath(a.work or osp.join(ROOT, 'work_dirs', 'pipelines_gpu' + ('_smoke' if a.smoke else '')))
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(WORK, exist_ok=True)
    if a.replot:
        curves(a.tasks.split(','))
        print('files:', sorted(os.listdir(OUT)), flush=True)
        return
    import torch
    DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'

    if a.task:  # child
        logf = open(osp.join(WORK, f'{a.task}.task.log'), 'a')

        def log(msg):
            line = f'[{time.strftime("%H:%M:%S")}] {msg}'
            print(line, flush=True)
            logf.write(line + '\n')
            logf.flush()
        res = dict(seg=task_seg, det=task_det, mim=task_mim)[a.task](a.smoke, a.budget, log)
        with open(osp.join(WORK, f'{a.task}.result.json'), 'w') as f:
            json.dump(res, f, indent=1)
        return

    t0 = time.time()
    machine = describe_env()
    deadline = Deadline(a.deadline + 40, t0)
    # budgets: training seconds per run; the rest of the deadline is start-up, data generation and evaluation
    budgets = dict(seg=a.deadline * 0.72, det=a.deadline * 0.72, mim=a.deadline * 0.85)
    if a.smoke:
        budgets = dict(seg=60, det=60, mim=60)
    procs = {}
    for t in a.tasks.split(','):
        procs[t] = subprocess.Popen([sys.executable, osp.abspath(__file__), '--task', t, '--out', OUT, '--work', WORK,
                                     '--budget', str(budgets[t])] + (['--smoke'] if a.smoke else [])
                                    + (['--lean'] if a.lean else []) + ['--det-init', a.det_init],
                                    cwd=ROOT, env=env())
    def write_summary():
        summary = dict(device=machine['device'], smoke=a.smoke, torch=machine['torch'],
                       wall_s=round(time.time() - t0, 1), budgets_s=budgets, env=machine)
        for t in procs:
            f = osp.join(WORK, f'{t}.result.json')
            summary[t] = json.load(open(f)) if osp.isfile(f) else dict(error='no result (crashed, killed or running)')
        if machine.get('triton'):
            summary['triton'] = machine['triton']
        write_json(osp.join(OUT, 'summary.json'), summary)
        return summary
    pending = dict(procs)
    while pending:  # a partial summary as soon as each task ends (the device lease may end before the last)
        for t, pr in list(pending.items()):
            if pr.poll() is not None:
                del pending[t]
                write_summary()
                print(f'{t}: finished (rc={pr.returncode}) at {time.time() - t0:.0f}s', flush=True)
        if deadline.expired():
            for t, pr in pending.items():
                print(f'{t}: over the deadline, killed', flush=True)
                pr.kill()
            break
        time.sleep(1)
    summary = write_summary()
    print(json.dumps(summary, indent=1), flush=True)
    try:
        curves(list(procs))
    except Exception as e:
        print(f'curves failed: {e!r}', flush=True)
    with tarfile.open(osp.join(OUT, 'logs.tar.gz'), 'w:gz') as tar:
        for dp, _, fs in os.walk(WORK):
            for fn in fs:
                if fn.endswith(('.log', '.json', '.py', '.stdout')) and not fn.endswith('.pth'):
                    full = osp.join(dp, fn)
                    tar.add(full, arcname=osp.relpath(full, WORK))
    print('files:', sorted(os.listdir(OUT)), flush=True)


WORK = OUT = DEVICE = None
LEAN = False
DET_INIT = 'cls'

if __name__ == '__main__':
    main()
