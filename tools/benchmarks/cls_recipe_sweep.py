#!/usr/bin/env python
"""Recipe sweep for the default synthetic-shapes classification job, timed as on a 2-core CPU machine.

Each variant runs ``tools/train.py`` pinned to its own pair of cores (``taskset``, 2 torch threads, the config's
2 dataloader workers sharing those cores), so a 16-core host times up to 7 variants at once as if each had the
2-core CI machine to itself (memory bandwidth is shared, so the times are upper bounds). Optionally one run goes
to the GPU. Writes ``sweep.json`` and ``sweep.md`` to --out.

    python tools/benchmarks/cls_recipe_sweep.py --out DIR [--gpu]
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

CFG = 'configs/linear_vit/linear-vit-t_shapes-cls.py'
VARIANTS = {
    'base': [],
    'lepe': ['+model.backbone.mixer.lepe=True'],
    'conv': ['+model.backbone.stem=conv'],
    'conv+lepe': ['+model.backbone.stem=conv', '+model.backbone.mixer.lepe=True'],
    'lepe-20ep': ['+model.backbone.mixer.lepe=True', 'train_cfg.max_epochs=20'],
    'conv+lepe-20ep': ['+model.backbone.stem=conv', '+model.backbone.mixer.lepe=True', 'train_cfg.max_epochs=20'],
    'conv-20ep-lr3e-3': ['+model.backbone.stem=conv', 'train_cfg.max_epochs=20',
                         'optim_wrapper.optimizer.lr=0.003'],
}


def final_acc(work_dir):
    runs = sorted(d for d in os.listdir(work_dir) if osp.isdir(osp.join(work_dir, d)) and d[:2] == '20')
    accs = []
    for line in open(osp.join(work_dir, runs[-1], 'vis_data', 'scalars.json')):
        rec = json.loads(line)
        if 'accuracy/top1' in rec:
            accs.append(rec['accuracy/top1'])
    return accs


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--out', required=True)
    p.add_argument('--gpu', action='store_true', help='also train the default config on the GPU')
    p.add_argument('--variants', nargs='*', default=list(VARIANTS))
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    subprocess.run([sys.executable, 'tools/prepare_data.py', 'shapes', '--task', 'cls'], check=True)
    ncpu = os.cpu_count()
    procs = {}
    for i, name in enumerate(args.variants):
        cores = f'{(2 * i) % ncpu},{(2 * i + 1) % ncpu}'
        wd = osp.join('work_dirs', 'sweep', name)
        env = dict(os.environ, OMP_NUM_THREADS='2', CUDA_VISIBLE_DEVICES='')
        cmd = ['taskset', '-c', cores, sys.executable, 'tools/train.py', CFG, '--work-dir', wd]
        if VARIANTS[name]:
            cmd += ['--cfg-options'] + VARIANTS[name]
        log = open(osp.join(args.out, f'{name}.log'), 'w')
        procs[name] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), time.time(), wd, cores)
    if args.gpu:
        wd = osp.join('work_dirs', 'sweep', 'gpu-base')
        log = open(osp.join(args.out, 'gpu-base.log'), 'w')
        procs['gpu-base'] = (subprocess.Popen([sys.executable, 'tools/train.py', CFG, '--work-dir', wd],
                                              stdout=log, stderr=subprocess.STDOUT), time.time(), wd, 'gpu')
    results = {}
    for name, (proc, t0, wd, cores) in procs.items():
        rc = proc.wait()
        wall = time.time() - t0
        try:
            accs = final_acc(wd)
        except Exception as e:  # noqa
            accs = [f'error: {e}']
        results[name] = dict(rc=rc, wall_s=round(wall, 1), cores=cores, val_top1=accs)
        print(name, results[name], flush=True)
    json.dump(results, open(osp.join(args.out, 'sweep.json'), 'w'), indent=1)
    with open(osp.join(args.out, 'sweep.md'), 'w') as f:
        f.write('| variant | where | wall s | final top-1 | best top-1 |\n|---|---|---|---|---|\n')
        for n, r in results.items():
            accs = [a for a in r['val_top1'] if isinstance(a, float)]
            f.write(f"| {n} | {r['cores']} | {r['wall_s']} | {accs[-1] if accs else '-'} | "
                    f"{max(accs) if accs else '-'} |\n")
    print(open(osp.join(args.out, 'sweep.md')).read())


if __name__ == '__main__':
    main()
