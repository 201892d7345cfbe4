#!/usr/bin/env python
"""Fast in-memory sweep of data difficulty x model options for the default shapes classification job.

Trains the LinearViT of the default config (plain PyTorch loop, the config's AdamW / clip / flip recipe) for the
iteration budget that fits 3 minutes on 2 CPU cores (measured with cls_recipe_sweep.py: ~600 iterations of batch
64), on data drawn straight from the generator, and reports validation top-1. Runs on CUDA when present.

    python tools/benchmarks/shapes_cls_fastsweep.py --out DIR [--iters 600] [--procs 4]
"""
import argparse
import json
import os
import os.path as osp
import sys
import time
from concurrent.futures import ProcessPoolExecutor

CONV_LEPE = dict(stem='conv', mixer=dict(type='linear_attn', lepe=True))
DATA = {
    'default': dict(image_size=32),
    'big1': dict(image_size=32, size_range=[0.3, 0.45], min_shapes=1, max_shapes=1),
    'big1-clean': dict(image_size=32, size_range=[0.3, 0.45], min_shapes=1, max_shapes=1, clutter=0.0),
    'big1-half': dict(image_size=32, size_range=[0.3, 0.45], min_shapes=1, max_shapes=1, clutter=0.5),
    'big12-half': dict(image_size=32, size_range=[0.25, 0.42], min_shapes=1, max_shapes=2, clutter=0.5),
    'big1-48': dict(image_size=48, size_range=[0.3, 0.45], min_shapes=1, max_shapes=1, clutter=0.5),
}
MODELS_ = {
    'conv+lepe': dict(CONV_LEPE),
    'conv+lepe-relu': dict(stem='conv', mixer=dict(type='linear_attn', lepe=True, feature_map='relu')),
    'conv+lepe-focused': dict(stem='conv', mixer=dict(type='linear_attn', lepe=True, feature_map='focused')),
    'conv+lepe-p8': dict(CONV_LEPE, patch_size=8),
    'patch': dict(),
}
RUNS = [(d, 'conv+lepe', 2e-3) for d in DATA] + \
       [('big1-half', m, 2e-3) for m in MODELS_ if m != 'conv+lepe'] + \
       [('big1-half', 'conv+lepe', 1e-3), ('big1-half', 'conv+lepe', 3e-3), ('big12-half', 'conv+lepe-relu', 2e-3)]


def run_one(job):
    data_name, model_name, lr, iters, dev = job
    import numpy as np
    import torch
    torch.set_num_threads(1)
    import vla_mm  # noqa: F401
    from vla_mm.datasets.shapes import make_cls_image, resolve_params
    from vla_mm.registry import MODELS
    p = resolve_params('cls', dict(DATA[data_name], num_train=3000, num_val=600, seed=0))

    def load(split, n):
        xs, ys = zip(*[make_cls_image(p, split, i) for i in range(n)])
        x = torch.from_numpy(np.stack(xs)[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x.to(dev), torch.tensor(ys, device=dev)
    X, Y = load('train', 3000)
    Xv, Yv = load('val', 600)
    torch.manual_seed(0)
    kw = json.loads(json.dumps(MODELS_[model_name]))
    patch = kw.pop('patch_size', 4)
    bb = MODELS.build(dict(type='LinearViT', arch=dict(embed_dims=96, num_layers=4, num_heads=3, mlp_ratio=2.0),
                           img_size=p['image_size'], patch_size=patch, **kw)).to(dev)
    bb.init_weights()
    head = torch.nn.Linear(96, len(p['classes'])).to(dev)
    params = list(bb.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iters, pct_start=1 / 13,
                                                anneal_strategy='cos')
    g = torch.Generator(device='cpu').manual_seed(0)
    t = time.time()
    curve = []
    for it in range(iters):
        idx = torch.randint(0, len(X), (64,), generator=g).to(dev)
        xb = X[idx]
        flip = (torch.rand(64, generator=g) < 0.5).to(dev)
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = torch.nn.functional.cross_entropy(head(bb(xb)[0].mean((2, 3))), Y[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        if (it + 1) % 100 == 0 or it + 1 == iters:
            bb.eval()
            with torch.no_grad():
                acc = (head(bb(Xv)[0].mean((2, 3))).argmax(1) == Yv).float().mean().item() * 100
            bb.train()
            curve.append((it + 1, round(acc, 2)))
    return dict(data=data_name, model=model_name, lr=lr, iters=iters, val_top1=curve[-1][1], curve=curve,
                seconds=round(time.time() - t, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', required=True)
    ap.add_argument('--iters', type=int, default=600)
    ap.add_argument('--procs', type=int, default=4)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import torch
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    jobs = [(d, m, lr, args.iters, dev) for d, m, lr in RUNS]
    import multiprocessing as mp
    with ProcessPoolExecutor(args.procs, mp_context=mp.get_context('spawn')) as ex:
        results = list(ex.map(run_one, jobs))
    json.dump(results, open(osp.join(args.out, 'fastsweep.json'), 'w'), indent=1)
    lines = ['| data | model | lr | iters | val top-1 | curve (iter, top-1) |', '|---|---|---|---|---|---|']
    for r in results:
        lines.append(f"| {r['data']} | {r['model']} | {r['lr']} | {r['iters']} | {r['val_top1']} | {r['curve']} |")
    open(osp.join(args.out, 'fastsweep.md'), 'w').write('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    sys.exit(main())
