#!/usr/bin/env python
"""Recipe sweep for the default synthetic-shapes classification job, timed as on a 2-core CPU machine.

Each variant runs ``tools/train.py`` pinned to its own pair of cores (``taskset``, 2 torch threads, the config's
2 dataloader workers sharing those cores), so a 16-core host times up to 7 variants at once as if each had the
2-core CI machine to itself (memory bandwidth is shared, so the times are upper bounds). The 'gpu' variants share
the GPU and give accuracy-per-epoch curves. Writes ``sweep.json`` and ``sweep.md`` to --out.

    python tools/benchmarks/cls_recipe_sweep.py --out DIR [--variants NAME ...] [--timeout S]
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time

CFG = 'configs/linear_vit/linear-vit-t_shapes-cls.py'
CONV = ['+model.backbone.stem=conv']
LEPE = ['+model.backbone.mixer.lepe=True']
BIG = ['train_dataloader.dataset.data_root=data/shapes/cls_big', 'val_dataloader.dataset.data_root=data/shapes/cls_big', 'test_dataloader.dataset.data_root=data/shapes/cls_big', '+train_dataloader.dataset.generate.size_range=[0.25,0.45]', '+val_dataloader.dataset.generate.size_range=[0.25,0.45]', '+test_dataloader.dataset.generate.size_range=[0.25,0.45]']
# name -> (where, cfg-options); 'cpu' runs are pinned to 2 cores (timing), 'gpu' runs share the GPU (accuracy curves)
VARIANTS = {
    'cpu-base-6ep': ('cpu', ['train_cfg.max_epochs=6']),
    'cpu-conv+lepe-6ep': ('cpu', CONV + LEPE + ['train_cfg.max_epochs=6']),
    'cpu-conv+lepe-big-6ep': ('cpu', CONV + LEPE + BIG + ['train_cfg.max_epochs=6']),
    'gpu-base-40ep': ('gpu', ['train_cfg.max_epochs=40']),
    'gpu-conv-40ep': ('gpu', CONV + ['train_cfg.max_epochs=40']),
    'gpu-lepe-40ep': ('gpu', LEPE + ['train_cfg.max_epochs=40']),
    'gpu-conv+lepe-40ep': ('gpu', CONV + LEPE + ['train_cfg.max_epochs=40']),
    'gpu-conv+lepe-lr4e-3-40ep': ('gpu', CONV + LEPE + ['train_cfg.max_epochs=40', 'optim_wrapper.optimizer.lr=0.004']),
    'gpu-conv+lepe-big-40ep': ('gpu', CONV + LEPE + BIG + ['train_cfg.max_epochs=40']),
    'gpu-base-big-40ep': ('gpu', BIG + ['train_cfg.max_epochs=40']),
    'gpu-default-12ep': ('gpu', []),
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
    p.add_argument('--variants', nargs='*', default=list(VARIANTS))
    p.add_argument('--timeout', type=float, default=480)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    subprocess.run([sys.executable, 'tools/prepare_data.py', 'shapes', '--task', 'cls'], check=True)
    procs, cpu_i = {}, 0
    logdir = osp.join(args.out, 'logs')
    os.makedirs(logdir, exist_ok=True)
    for name in args.variants:
        where, opts = VARIANTS[name]
        wd = osp.join('work_dirs', 'sweep', name)
        if where == 'cpu':
            cores = f'{2 * cpu_i},{2 * cpu_i + 1}'
            cpu_i += 1
            env = dict(os.environ, OMP_NUM_THREADS='2', CUDA_VISIBLE_DEVICES='')
            cmd = ['taskset', '-c', cores, sys.executable, 'tools/train.py', CFG, '--work-dir', wd]
        else:
            cores = 'gpu'
            env = dict(os.environ, OMP_NUM_THREADS='1')
            cmd = ['taskset', '-c', '8-15', sys.executable, 'tools/train.py', CFG, '--work-dir', wd]
        if opts:
            cmd += ['--cfg-options'] + opts
        log = open(osp.join(logdir, f'{name}.log'), 'w')
        procs[name] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), time.time(), wd, cores)
        if any('cls_big' in o for o in opts) and not osp.isdir('data/shapes/cls_big'):
            time.sleep(20)  # let the first run of the variant generate its data
    results = {}
    for name, (proc, t0, wd, cores) in procs.items():
        try:
            rc = proc.wait(timeout=max(1, args.timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = 'timeout'
        wall = time.time() - t0
        try:
            accs = final_acc(wd)
        except Exception as e:  # noqa
            accs = [f'error: {e}']
        results[name] = dict(rc=rc, wall_s=round(wall, 1), cores=cores, val_top1=accs)
        print(name, results[name], flush=True)
    json.dump(results, open(osp.join(args.out, 'sweep.json'), 'w'), indent=1)
    # at most a few files come back from the GPU machine: pack the logs and curves into one archive
    subprocess.run(['tar', '--exclude=*.pth', '-czf', osp.join(args.out, 'logs.tar.gz'), '-C', args.out, 'logs', '-C', osp.abspath('.'),
                    'work_dirs/sweep'], check=False)
    subprocess.run(['rm', '-rf', logdir])
    with open(osp.join(args.out, 'sweep.md'), 'w') as f:
        f.write('| variant | where | wall s | final top-1 | best top-1 | epochs to 95% |\n|---|---|---|---|---|---|\n')
        for n, r in results.items():
            accs = [a for a in r['val_top1'] if isinstance(a, float)]
            f.write(f"| {n} | {r['cores']} | {r['wall_s']} | {accs[-1] if accs else '-'} | "
                    f"{max(accs) if accs else '-'} | {next((i + 1 for i, a in enumerate(accs) if a >= 95), '-')} |\n")
    print(open(osp.join(args.out, 'sweep.md')).read())


if __name__ == '__main__':
    main()
