"""Check every token mixer of the zoo on the GPU machine: compatibility cells and the learning check.

    source tools/device_prelude.sh && python3 tools/check_zoo_gpu.py --out $OUT [--parts compat,learn]
    python tools/check_zoo_gpu.py --out /tmp/zoo --smoke            # CPU, tiny sizes (CI)

compat: for each mixer x {pure, hybrid} x scan route, an isotropic backbone (2 blocks, 256 channels, 4 heads of
    64; the hybrid's second block is softmax attention) runs forward + backward under bf16 autocast at 224 and
    1024 (196 and 4096 tokens): every output and gradient finite, and the output within tolerance of the same
    model on the reference ops (``VLA_OPS_REFERENCE=1``, float32, no autocast).
learn: the default shapes classification job with each mixer swapped in (one config per mixer, ``--configs``),
    several ``tools/train.py`` processes at a time on the one GPU; final val top-1 and wall time per mixer.

Writes ``zoo_gpu.json`` and ``zoo_gpu.md`` (the tables) under ``--out``; the tables are printed last.
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import threading
import time
import traceback

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MIXERS = ('linear_attn', 'abc', 'bitnet', 'deltanet', 'gated_deltanet', 'gla', 'gsa', 'hgrn', 'hgrn2',
          'lightnet', 'retnet', 'rwkv6', 'transformer')
ROUTES = ('uni', 'flip', 'random', 'bi', 'cross', 'mh2d')


def build_backbone(mixer, route, hybrid, img, dims=256, heads=4, depth=2):
    from vla_mm.registry import MODELS
    cfg = dict(type='vla_mm.LinearViT', arch=dict(embed_dims=dims, num_layers=depth, num_heads=heads, mlp_ratio=2.0),
               img_size=img, patch_size=16, mixer=dict(type=mixer), out_type='avg_featmap')
    if route != 'uni':
        cfg['scan'] = dict(type=route)
    if hybrid:
        cfg['attn_layers'] = [depth - 1]
    m = MODELS.build(cfg)
    m.init_weights()
    return m


def _is_res(key):
    return key[:1] == 'r' and key[1:].isdigit()


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def compat_cell(mixer, route, hybrid, res, device, tol):
    """One cell at one resolution: bf16 forward+backward finite, output vs the reference ops."""
    import torch
    torch.manual_seed(0)
    m = build_backbone(mixer, route, hybrid, res, **({'dims': 32} if res < 64 else {})).to(device)
    x = torch.randn(1, 3, res, res, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda'):
        (y,) = m(x)
    y.float().square().mean().backward()
    bad = [n for n, p in m.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    finite = bool(torch.isfinite(y).all()) and not bad
    os.environ['VLA_OPS_REFERENCE'] = '1'
    try:
        with torch.no_grad():
            (y_ref,) = m(x)
    finally:
        os.environ.pop('VLA_OPS_REFERENCE', None)
    err = rel(y.float(), y_ref.float())
    return dict(finite=finite, bad_grads=bad[:4], err=err, ok=finite and err < tol)


def part_compat(args, device, deadline):
    """Cells in breadth-first order (224 px for every cell first, then 1024 px for ``--routes-hi`` routes), so a
    deadline leaves the whole table covered at the low resolution rather than some mixers not at all."""
    import torch
    resolutions = (32,) if args.smoke else (224, 1024)
    cells = {}
    plan = [(res, route, hybrid, mixer) for res in resolutions
            for route in (args.routes if res == resolutions[0] else args.routes_hi)
            for hybrid in (False, True) for mixer in args.mixers]
    for res, route, hybrid, mixer in plan:
        cell = cells.setdefault((mixer, hybrid, route), dict(mixer=mixer, hybrid=hybrid, route=route))
        key = f'r{res}'
        if time.time() > deadline:
            cell[key] = dict(ok=None, error='not reached (deadline)')
            continue
        t0 = time.time()
        try:
            cell[key] = compat_cell(mixer, route, hybrid, res, device, args.tol)
        except Exception as e:  # a failing cell is a result, not the end of the run
            cell[key] = dict(ok=False, error=f'{type(e).__name__}: {e}'[:300], trace=traceback.format_exc()[-1500:])
        cell[key]['seconds'] = round(time.time() - t0, 2)
        if device.type == 'cuda':
            torch.cuda.empty_cache()
        print(json.dumps(dict(res=res, **{k: v for k, v in cell.items() if not _is_res(k)},
                              **{k: v for k, v in cell[key].items() if k != 'trace'}))[:400], flush=True)
    rows = list(cells.values())
    for c in rows:
        for res in resolutions:
            c.setdefault(f'r{res}', dict(ok=None, error='not planned'))
    return rows


def top1(work_dir):
    """Last val accuracy/top1 in the newest vis_data/scalars.json of a work dir."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    acc = None
    for line in open(files[-1]) if files else ():
        rec = json.loads(line)
        if 'accuracy/top1' in rec:
            acc = rec['accuracy/top1']
    return acc


def part_learn(args, deadline):
    configs = args.configs or sorted(glob.glob(osp.join(ROOT, 'configs', '*', '*-t_1xb64_shapes-48px.py')))
    subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'prepare_data.py'), 'shapes', '--task', 'cls'],
                   check=False, cwd=ROOT)
    pending, running, rows = list(configs), [], []
    while pending or running:
        while pending and len(running) < args.jobs and time.time() < deadline:
            cfg = pending.pop(0)
            name = osp.splitext(osp.basename(cfg))[0]
            wd = osp.join(args.out_work, name)
            cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), cfg, '--work-dir', wd]
            if args.smoke:
                cmd += ['--cfg-options', 'train_cfg.max_epochs=1', 'train_dataloader.num_workers=0',
                        'val_dataloader.num_workers=0']
            log = open(osp.join(args.out_work, name + '.log'), 'w')
            running.append((cfg, name, wd, time.time(), subprocess.Popen(cmd, cwd=ROOT, stdout=log,
                                                                          stderr=subprocess.STDOUT), log))
        if not pending or len(running) >= args.jobs or time.time() >= deadline:
            time.sleep(2)
        for item in list(running):
            cfg, name, wd, t0, proc, log = item
            if proc.poll() is None and time.time() < deadline:
                continue
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            log.close()
            running.remove(item)
            rows.append(dict(config=osp.relpath(cfg, ROOT), rc=proc.returncode, top1=top1(wd),
                             seconds=round(time.time() - t0, 1)))
            print(json.dumps(rows[-1]), flush=True)
        if time.time() >= deadline and not running:
            rows += [dict(config=osp.relpath(c, ROOT), rc=None, top1=None, seconds=None) for c in pending]
            pending = []
    return rows


def tables(res):
    out = []
    if res.get('compat'):
        keys = [k for k in res['compat'][0] if _is_res(k)]
        out += ['| mixer | hybrid | route | ' + ' | '.join(f'{k[1:]} px: ok / err vs ref' for k in keys) + ' |',
                '| --- | --- | --- | ' + ' | '.join('---' for _ in keys) + ' |']
        for c in res['compat']:
            cells = []
            for k in keys:
                r = c[k]
                mark = {True: 'ok', False: 'FAIL', None: 'not run'}[r.get('ok')]
                cells.append(f"{mark} {r['err']:.1e}" if 'err' in r else f"{mark} {r.get('error', '')[:60]}")
            out.append(f"| {c['mixer']} | {c['hybrid']} | {c['route']} | " + ' | '.join(cells) + ' |')
    if res.get('learn'):
        out += ['', '| config | rc | val top-1 | seconds |', '| --- | --- | --- | --- |']
        out += [f"| {r['config']} | {r['rc']} | {r['top1']} | {r['seconds']} |" for r in res['learn']]
    return '\n'.join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True)
    p.add_argument('--parts', default='compat,learn')
    p.add_argument('--mixers', nargs='+', default=list(MIXERS))
    p.add_argument('--routes', nargs='+', default=list(ROUTES))
    p.add_argument('--routes-hi', nargs='+', default=['uni', 'bi', 'cross'], help='routes also checked at 1024 px')
    p.add_argument('--configs', nargs='*', help='learn: configs to train (default configs/*/*-t_1xb64_shapes-48px.py)')
    p.add_argument('--jobs', type=int, default=4, help='learn: training processes at a time')
    p.add_argument('--tol', type=float, default=5e-2, help='compat: bf16 output vs fp32 reference ops')
    p.add_argument('--deadline', type=float, default=540, help='seconds for all parts together')
    p.add_argument('--learn-seconds', type=float, default=None, help='learn: seconds (default: the deadline)')
    p.add_argument('--smoke', action='store_true')
    args = p.parse_args()
    sys.path.insert(0, ROOT)
    import torch
    import vla_mm  # noqa: F401
    os.makedirs(args.out, exist_ok=True)
    args.out_work = osp.join(ROOT, 'work_dirs', 'check_zoo_gpu')
    os.makedirs(args.out_work, exist_ok=True)
    device = torch.device('cuda' if torch.cuda.is_available() and not args.smoke else 'cpu')
    start = time.time()
    end = start + args.deadline
    parts = args.parts.split(',')
    learn_s = args.learn_seconds if args.learn_seconds is not None else args.deadline
    res = dict(device=torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu', torch=torch.__version__,
               command=' '.join(sys.argv))
    learner = None
    if 'learn' in parts:  # training processes run beside the compat cells (one GPU, separate processes)
        learner = threading.Thread(target=lambda: res.__setitem__('learn', part_learn(args, start + learn_s)))
        learner.start()
    if 'compat' in parts:
        res['compat'] = part_compat(args, device, end)
    if learner is not None:
        learner.join()
    res['seconds'] = round(time.time() - start, 1)
    with open(osp.join(args.out, 'zoo_gpu.json'), 'w') as f:
        json.dump(res, f, indent=1)
    text = tables(res)
    with open(osp.join(args.out, 'zoo_gpu.md'), 'w') as f:
        f.write(text + '\n')
    print(text)
    failed = [c for c in res.get('compat', []) for k, v in c.items() if _is_res(k) and v.get('ok') is False]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
