"""Check every token mixer of the zoo on the GPU machine: compatibility cells and the learning check.

    source tools/device_prelude.sh && python3 tools/check_zoo_gpu.py --out $OUT [--parts compat,learn]
    # a split over calls: later calls run only the cells earlier ones did not decide, and write the whole table
    ... --parts compat --rest A/zoo_gpu.json [B/zoo_gpu.json ...]
    python tools/check_zoo_gpu.py --out DIR --merge A/zoo_gpu.json B/zoo_gpu.json     # no run: one table
    python tools/check_zoo_gpu.py --out /tmp/zoo --smoke            # CPU, tiny sizes (CI)

compat: for each mixer x {pure, hybrid} x scan route, an isotropic backbone (2 blocks, 256 channels, 4 heads of
    64; the hybrid's second block is softmax attention) runs forward + backward under bf16 autocast at each
    ``--res`` (224 and 1024: 196 and 4096 tokens): every output and gradient finite, and the output within
    tolerance of the same model on the reference ops (``VLA_OPS_REFERENCE=1``, float32, no autocast). The cells
    run in worker processes, one per (mixer, resolution), ``--compat-jobs`` at a time, the slowest to compile
    first: Triton compiles on the host, so the families compile side by side, and a crashed worker costs only
    its own remaining cells. ``--rest FILES``: only the cells those results did not decide (not reached, not
    planned, a worker that died), the decided ones copied into this call's table.
learn: the default shapes classification job with each mixer swapped in (one config per mixer, ``--configs``),
    ``--jobs`` ``tools/train.py`` processes at a time on the one GPU; final val top-1 (>= ``--min-top1``), the
    top-1 after every epoch and the wall time per mixer. ``--warm`` (default on CUDA): one process per config
    first runs its model on the job's batch shapes (a train step, validation forwards), all at once, so each
    family's first Triton compile (35-45 s for the delta rule) happens in parallel before the trainings; a
    config's training starts when its warm-up ends.

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
# relative host cost of a worker's cells (Triton compiles of the family, reference loops): the dearest start first
COST = dict(deltanet=3, gated_deltanet=3, gsa=2, abc=2, rwkv6=2, hgrn2=1.5, gla=1.5, retnet=1.5, lightnet=1.5)
TINY_SHAPES = dict(image_size=48, num_train=8, num_val=4, min_shapes=1, max_shapes=1, size_range=[0.3, 0.45],
                   clutter=0.5, seed=0)


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


def _write_json(path, obj):
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def compat_worker(args):
    """One (mixer, resolution) group in this process: its cells (``--cells route:pure|hybrid ...``) in order, the
    list written after every cell."""
    import torch
    device = torch.device('cuda' if torch.cuda.is_available() and not args.smoke else 'cpu')
    (mixer,), (res,) = args.mixers, args.res
    done = []
    for route, kind in (c.split(':') for c in args.cells):
        hybrid = kind == 'hybrid'
        t0 = time.time()
        try:
            r = compat_cell(mixer, route, hybrid, res, device, args.tol)
        except Exception as e:  # a failing cell is a result, not the end of the group
            r = dict(ok=False, error=f'{type(e).__name__}: {e}'[:300], trace=traceback.format_exc()[-1500:])
        r['seconds'] = round(time.time() - t0, 2)
        done.append(dict(mixer=mixer, hybrid=hybrid, route=route, res=res, result=r))
        _write_json(args.worker, done)
        if device.type == 'cuda':
            torch.cuda.empty_cache()
        print(json.dumps(dict(mixer=mixer, hybrid=hybrid, route=route, res=res,
                              **{k: v for k, v in r.items() if k != 'trace'}))[:400], flush=True)
    return 0


def decided(paths):
    """{(mixer, hybrid, route, res): result} of the cells these zoo_gpu.json files decided (ok True or False)."""
    out = {}
    for path in paths or ():
        with open(path) as f:
            for c in json.load(f).get('compat', []):
                for k, v in c.items():
                    if _is_res(k) and v.get('ok') is not None:
                        out[(c['mixer'], c['hybrid'], c['route'], int(k[1:]))] = v
    return out


def compat_groups(args, skip):
    """[(mixer, res, [(route, hybrid)])] of the cells to run (not in ``skip``), dearest first."""
    groups = []
    for res in args.res:
        for mixer in args.mixers:
            cells = [(r, h) for r in args.routes for h in (False, True) if (mixer, h, r, res) not in skip]
            if cells:
                groups.append((mixer, res, cells))
    return sorted(groups, key=lambda g: -COST.get(g[0], 1) * g[1] * len(g[2]))


def part_compat(args, end):
    """Every (mixer, resolution) group in a worker process, ``--compat-jobs`` at a time; returns the cell rows
    (cells decided by ``--rest`` files included)."""
    skip = decided(args.rest)
    groups = compat_groups(args, skip)
    jobs = args.compat_jobs or max(1, min(16, os.cpu_count() or 1))
    wdir = osp.join(args.out_work, 'compat')
    os.makedirs(wdir, exist_ok=True)
    results, pending, running = {}, list(groups), []
    print(f'compat: {sum(len(g[2]) for g in groups)} cells in {len(groups)} workers, {jobs} at a time; '
          f'{len(skip)} decided by --rest', flush=True)
    while pending or running:
        while pending and len(running) < jobs and time.time() < end:
            mixer, res, cells = pending.pop(0)
            path = osp.join(wdir, f'{mixer}_{res}.json')
            if osp.exists(path):
                os.remove(path)
            cmd = [sys.executable, osp.abspath(__file__), '--out', args.out, '--worker', path, '--mixers', mixer,
                   '--res', str(res), '--cells', *(f"{r}:{'hybrid' if h else 'pure'}" for r, h in cells),
                   '--tol', str(args.tol)] + (['--smoke'] if args.smoke else [])
            log = open(osp.join(wdir, f'{mixer}_{res}.log'), 'w')
            running.append(((mixer, res, cells), path, subprocess.Popen(cmd, cwd=ROOT, stdout=log,
                                                                       stderr=subprocess.STDOUT), log))
        time.sleep(0.5)
        for item in list(running):
            (mixer, res, planned), path, proc, log = item
            if proc.poll() is None and time.time() < end:
                continue
            why = None
            if proc.poll() is None:
                proc.kill()
                why = 'not reached (deadline)'
            proc.wait()
            log.close()
            running.remove(item)
            if why is None and proc.returncode != 0:
                why = f'not reached (worker exited with {proc.returncode}; log {osp.relpath(log.name, ROOT)})'
            cells = []
            if osp.exists(path):
                with open(path) as f:
                    cells = json.load(f)
            for c in cells:
                results[(c['mixer'], c['hybrid'], c['route'], c['res'])] = c['result']
            for route, hybrid in planned:
                results.setdefault((mixer, hybrid, route, res), dict(ok=None, error=why or 'not reached'))
            print(f'compat worker {mixer} {res}: rc={proc.returncode}, {len(cells)} cells', flush=True)
        if time.time() >= end and not running:
            for mixer, res, planned in pending:
                for route, hybrid in planned:
                    results[(mixer, hybrid, route, res)] = dict(ok=None, error='not reached (deadline)')
            pending = []
    results = {**skip, **results}
    return cell_rows(results, args.res)


def cell_rows(results, resolutions):
    """Table rows (mixer, hybrid, route, r<res>: result) by route, then pure before hybrid, then mixer."""
    rows = {}
    keys = sorted(results, key=lambda k: (list(ROUTES).index(k[2]) if k[2] in ROUTES else 99, k[1],
                                          MIXERS.index(k[0]) if k[0] in MIXERS else 99))
    for mixer, hybrid, route, res in keys:
        rows.setdefault((mixer, hybrid, route), dict(mixer=mixer, hybrid=hybrid, route=route))[f'r{res}'] = \
            results[(mixer, hybrid, route, res)]
    all_res = sorted({k[3] for k in results} | set(resolutions))
    for c in rows.values():
        for res in all_res:
            c.setdefault(f'r{res}', dict(ok=None, error='not planned'))
    return [{**{k: v for k, v in c.items() if not _is_res(k)},
             **{k: c[k] for k in sorted((k for k in c if _is_res(k)), key=lambda k: int(k[1:]))}}
            for c in rows.values()]


# ----------------------------------------------------------------------------------------------- learn
def top1s(work_dir):
    """The val accuracy/top1 after every validation in the newest vis_data/scalars.json of a work dir."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    out = []
    for line in open(files[-1]) if files else ():
        rec = json.loads(line)
        if 'accuracy/top1' in rec:
            out.append(rec['accuracy/top1'])
    return out


def top1(work_dir):
    """Last val accuracy/top1 of a work dir (None before the first validation)."""
    accs = top1s(work_dir)
    return accs[-1] if accs else None


def _options_dict(options):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser()
    p.add_argument('--o', nargs='+', action=DictAction, default=None)
    return p.parse_args(['--o', *options]).o if options else None


def learn_options(args, data_root):
    """``--cfg-options`` of every training process (``--smoke``: one epoch on a tiny data set, no workers)."""
    opts = list(args.learn_options or [])
    if args.smoke:
        opts += ['train_cfg.max_epochs=2', 'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
                 'train_dataloader.batch_size=4', 'val_dataloader.batch_size=4']
        for loader in ('train_dataloader', 'val_dataloader'):
            opts += [f'{loader}.dataset.data_root={data_root}'] + [
                f'{loader}.dataset.generate.{k}={v}' for k, v in TINY_SHAPES.items() if k != 'size_range']
    return opts


def prepare_data(config, options):
    """Generate the data set the configs train on (their train_dataloader's data_root and generate parameters)
    once, before the training processes start (they would each try)."""
    sys.path.insert(0, ROOT)
    from vla_mm.datasets import shapes
    from vla_mm.utils.cli import load_config
    ds = load_config(config, _options_dict(options)).train_dataloader.dataset
    if not ds.get('generate'):
        return 'no generator in the config'
    root = ds.data_root if osp.isabs(ds.data_root) else osp.join(ROOT, ds.data_root)
    return shapes.generate('cls', root, dict(ds.generate), num_workers=min(8, os.cpu_count() or 1), logger=None)


def warm_config(path, options, smoke):
    """Build a config's classifier and run a train step at each training batch size and eval forwards at each
    validation batch size of its job (a full batch and the last, partial one): its Triton kernels are then in
    the cache for the training process."""
    import torch
    import vla_mm  # noqa: F401
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    from vla_mm.utils.cli import load_config
    cfg = load_config(path, _options_dict(options))
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    device = torch.device('cuda' if torch.cuda.is_available() and not smoke else 'cpu')
    model = MODELS.build(cfg.model).to(device)
    model.init_weights()
    img = cfg.model.backbone.get('img_size', 224)
    amp = cfg.optim_wrapper.get('type') == 'AmpOptimWrapper' and device.type == 'cuda'

    def sizes(loader, n_key):
        bs = cfg[loader].batch_size
        n = (cfg[loader].dataset.get('generate') or {}).get(n_key)
        return sorted({bs} | ({n % bs} if n and n % bs else set()))
    t0 = time.time()
    model.train()
    for b in sizes('train_dataloader', 'num_train'):
        with torch.autocast(device.type, enabled=amp):
            feats = model.extract_feat(torch.randn(b, 3, img, img, device=device))
        sum(f.float().mean() for f in feats).backward()
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, enabled=amp):
        for b in sizes('val_dataloader', 'num_val'):
            model.extract_feat(torch.randn(b, 3, img, img, device=device))
    if device.type == 'cuda':
        torch.cuda.synchronize()
    print(f'warm {osp.basename(path)}: {time.time() - t0:.1f}s', flush=True)
    return 0


def _tail(path, n=8):
    try:
        with open(path) as f:
            return [ln.rstrip() for ln in f.readlines()[-n:]]
    except OSError:
        return []


def part_learn(args, deadline):
    """Warm-ups (``--warm``), the data set, then the training processes, ``--jobs`` at a time; one row per
    config. A process still running at the deadline is killed and reported with what it reached."""
    configs = args.configs or sorted(glob.glob(osp.join(ROOT, 'configs', '*', '*-t_1xb64_shapes-48px.py')))
    data_root = osp.join(args.out_work, 'shapes_cls_tiny')
    opts = learn_options(args, data_root)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '2'))
    data = {}
    prep = threading.Thread(target=lambda: data.__setitem__('status', _guard(prepare_data, configs[0], opts)))
    prep.start()
    warm = args.warm if args.warm is not None else (not args.smoke and _cuda())
    warm_jobs = args.warm_jobs or max(1, min(len(configs), (os.cpu_count() or 2) - 2))
    warm_end = min(deadline, time.time() + args.warm_seconds)
    pending_warm, warming, ready = (list(configs), {}, []) if warm else ([], {}, list(configs))
    training, rows, warm_s = {}, {}, {}

    def name_of(cfg):
        return osp.splitext(osp.basename(cfg))[0]
    while pending_warm or warming or ready or training:
        now = time.time()
        while pending_warm and len(warming) < warm_jobs and now < warm_end:
            cfg = pending_warm.pop(0)
            log = osp.join(args.out_work, name_of(cfg) + '.warm.log')
            cmd = [sys.executable, osp.abspath(__file__), '--out', args.out, '--warm-config', cfg] + \
                (['--learn-options', *opts] if opts else []) + (['--smoke'] if args.smoke else [])
            with open(log, 'w') as f:
                warming[cfg] = (subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env), now, log)
        if now >= warm_end:  # warm-ups not started by now are left out: their trainings compile for themselves
            ready += pending_warm
            pending_warm = []
        for cfg, (proc, t0, log) in list(warming.items()):
            if proc.poll() is None and now < warm_end:
                continue
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            warm_s[cfg] = dict(seconds=round(now - t0, 1), rc=proc.returncode,
                               tail=[] if proc.returncode == 0 else _tail(log, 4))
            del warming[cfg]
            ready.append(cfg)
        while not prep.is_alive() and ready and len(training) < args.jobs and now < deadline:
            cfg = ready.pop(0)
            wd = osp.join(args.out_work, name_of(cfg))
            cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), cfg, '--work-dir', wd]
            if opts:
                cmd += ['--cfg-options', *opts]
            log = osp.join(args.out_work, name_of(cfg) + '.log')
            with open(log, 'w') as f:
                training[cfg] = (subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env),
                                 now, wd, log)
        for cfg, (proc, t0, wd, log) in list(training.items()):
            if proc.poll() is None and now < deadline:
                continue
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            del training[cfg]
            accs = top1s(wd)
            rows[cfg] = dict(config=osp.relpath(cfg, ROOT), rc=proc.returncode, top1=accs[-1] if accs else None,
                             per_epoch=accs, seconds=round(now - t0, 1), warm=warm_s.get(cfg),
                             ok=bool(accs) and accs[-1] >= args.min_top1,
                             tail=[] if proc.returncode == 0 else _tail(log))
            print(json.dumps({k: v for k, v in rows[cfg].items() if k != 'tail'}), flush=True)
        if now >= deadline and not training:
            for proc, _, _ in warming.values():
                proc.kill()
            for cfg in list(warming) + pending_warm + ready:
                rows[cfg] = dict(config=osp.relpath(cfg, ROOT), rc=None, top1=None, per_epoch=[], seconds=None,
                                 warm=warm_s.get(cfg), ok=False, tail=['not started (deadline)'])
            break
        time.sleep(1)
    prep.join()
    if data.get('status', '').startswith('error'):
        print(f'data: {data["status"]}', flush=True)
    return [rows[c] for c in configs if c in rows]


def _guard(fn, *a):
    try:
        return fn(*a)
    except Exception as e:  # noqa: BLE001  (reported; the trainings then fail on the data themselves)
        return f'error: {type(e).__name__}: {e}'


def _cuda():
    import torch
    return torch.cuda.is_available()


# ----------------------------------------------------------------------------------------------- tables
def merge(paths):
    """One result from several zoo_gpu.json files: each cell (and learn row) from the last file that decided it."""
    cells, learn, res = {}, {}, dict(merged=list(paths))
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        for key in ('device', 'torch'):
            res.setdefault(key, r.get(key))
        for c in r.get('compat', []):
            for k, v in c.items():
                if _is_res(k):
                    key = (c['mixer'], c['hybrid'], c['route'], int(k[1:]))
                    if v.get('ok') is not None or key not in cells:
                        cells[key] = v
        for row in r.get('learn', []):
            if row.get('top1') is not None or row['config'] not in learn:
                learn[row['config']] = row
    if cells:
        res['compat'] = cell_rows(cells, sorted({k[3] for k in cells}))
    if learn:
        res['learn'] = list(learn.values())
    return res


def _mark(r):
    return {True: 'ok', False: 'FAIL', None: '-'}[r.get('ok')]


def tables(res):
    out = []
    if res.get('compat'):
        keys = sorted({k for c in res['compat'] for k in c if _is_res(k)}, key=lambda k: int(k[1:]))
        counts = {k: {m: sum(_mark(c[k]) == m for c in res['compat']) for m in ('ok', 'FAIL', '-')} for k in keys}
        out += ['cells: ' + '; '.join(f"{k[1:]} px {v['ok']} ok, {v['FAIL']} fail, {v['-']} not run"
                                     for k, v in counts.items()), '']
        routes = list(dict.fromkeys(c['route'] for c in res['compat']))
        mixers = list(dict.fromkeys(c['mixer'] for c in res['compat']))
        by = {(c['mixer'], c['hybrid'], c['route']): c for c in res['compat']}
        out += ['| mixer | ' + ' | '.join(routes) + f" |  (each cell: {' / '.join(k[1:] + ' px' for k in keys)})",
                '| --- |' + ' --- |' * len(routes)]
        for mixer in mixers:
            for hybrid in (False, True):
                cells = [' / '.join(_mark(by[(mixer, hybrid, r)][k]) if (mixer, hybrid, r) in by else '-'
                                    for k in keys) for r in routes]
                out.append(f"| {mixer}{' (hybrid)' if hybrid else ''} | " + ' | '.join(cells) + ' |')
        out += ['', '| mixer | hybrid | route | ' + ' | '.join(f'{k[1:]} px: ok / err vs ref' for k in keys) + ' |',
                '| --- | --- | --- | ' + ' | '.join('---' for _ in keys) + ' |']
        for c in res['compat']:
            cells = []
            for k in keys:
                r = c[k]
                mark = {True: 'ok', False: 'FAIL', None: 'not run'}[r.get('ok')]
                cells.append(f"{mark} {r['err']:.1e}" if 'err' in r else f"{mark} {r.get('error', '')[:60]}")
            out.append(f"| {c['mixer']} | {c['hybrid']} | {c['route']} | " + ' | '.join(cells) + ' |')
    if res.get('learn'):
        out += ['', '| config | rc | val top-1 | >= target | top-1 per epoch | train s | warm-up s |',
                '| --- | --- | --- | --- | --- | --- | --- |']
        for r in res['learn']:
            curve = ', '.join(f'{a:.1f}' for a in r.get('per_epoch') or [])
            warm = (r.get('warm') or {}).get('seconds')
            out.append(f"| {r['config']} | {r['rc']} | {r['top1']} | {'yes' if r.get('ok') else 'no'} | {curve} | "
                       f"{r['seconds']} | {warm if warm is not None else '-'} |")
    return '\n'.join(out)


def write(res, out):
    with open(osp.join(out, 'zoo_gpu.json'), 'w') as f:
        json.dump(res, f, indent=1)
    text = tables(res)
    with open(osp.join(out, 'zoo_gpu.md'), 'w') as f:
        f.write(text + '\n')
    print(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True)
    p.add_argument('--parts', default='compat,learn')
    p.add_argument('--mixers', nargs='+', default=list(MIXERS))
    p.add_argument('--routes', nargs='+', default=list(ROUTES))
    p.add_argument('--res', nargs='+', type=int, default=None, help='compat: resolutions (default 224 1024)')
    p.add_argument('--compat-jobs', type=int, default=0, help='compat: worker processes at once (default: CPUs)')
    p.add_argument('--rest', nargs='+', metavar='ZOO_GPU_JSON', help='compat: skip the cells these files decided')
    p.add_argument('--merge', nargs='+', metavar='ZOO_GPU_JSON', help='no run: these files in one table')
    p.add_argument('--configs', nargs='*', help='learn: configs to train (default configs/*/*-t_1xb64_shapes-48px.py)')
    p.add_argument('--jobs', type=int, default=7, help='learn: training processes at a time')
    p.add_argument('--warm', dest='warm', action='store_true', default=None,
                   help='learn: warm-up processes first (default: on CUDA)')
    p.add_argument('--no-warm', dest='warm', action='store_false')
    p.add_argument('--warm-jobs', type=int, default=0, help='learn: warm-ups at once (default: CPUs - 2)')
    p.add_argument('--warm-seconds', type=float, default=240, help='learn: warm-ups still running then are killed')
    p.add_argument('--learn-options', nargs='+', default=None, help='learn: --cfg-options of every training')
    p.add_argument('--min-top1', type=float, default=90.0, help='learn: the target val top-1')
    p.add_argument('--tol', type=float, default=5e-2, help='compat: bf16 output vs fp32 reference ops')
    p.add_argument('--deadline', type=float, default=540, help='seconds for all parts together')
    p.add_argument('--learn-seconds', type=float, default=None, help='learn: seconds (default: the deadline)')
    p.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'check_zoo_gpu'),
                   help='worker files, training work dirs and logs (not under --out: only a few files come back)')
    p.add_argument('--smoke', action='store_true')
    p.add_argument('--worker', help=argparse.SUPPRESS)
    p.add_argument('--cells', nargs='+', help=argparse.SUPPRESS)
    p.add_argument('--warm-config', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.res = args.res or ([32] if args.smoke else [224, 1024])
    return args


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    if args.worker:
        return compat_worker(args)
    if args.warm_config:
        return warm_config(args.warm_config, args.learn_options, args.smoke)
    os.makedirs(args.out, exist_ok=True)
    if args.merge:
        write(merge(args.merge), args.out)
        return 0
    import torch
    args.out_work = osp.abspath(args.work_dir)
    os.makedirs(args.out_work, exist_ok=True)
    start = time.time()
    end = start + args.deadline
    parts = args.parts.split(',')
    learn_s = args.learn_seconds if args.learn_seconds is not None else args.deadline
    res = dict(device=torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke else 'cpu',
               torch=torch.__version__, command=' '.join(sys.argv if argv is None else argv))
    learner = None
    if 'learn' in parts:  # training processes run beside the compat workers (one GPU, separate processes)
        learner = threading.Thread(target=lambda: res.__setitem__('learn', part_learn(args, start + learn_s)))
        learner.start()
    if 'compat' in parts:
        res['compat'] = part_compat(args, end)
    if learner is not None:
        learner.join()
    res['seconds'] = round(time.time() - start, 1)
    write(res, args.out)
    failed = [c for c in res.get('compat', []) for k, v in c.items() if _is_res(k) and v.get('ok') is False]
    missed = [r for r in res.get('learn', []) if not r.get('ok')]
    return 1 if failed or missed else 0


if __name__ == '__main__':
    sys.exit(main())
