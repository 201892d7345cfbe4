"""Delta rule core (DeltaNet / Gated DeltaNet) on the GPU: full-size correctness (forward, final state and every
gradient against a float64 step-by-step reference, on this triton), a cross-check against flash-linear-attention
0.6.0 where it runs, launch-choice sweep, kernel profile and the benchmark (bf16) beside the PyTorch reference,
causal SDPA and fla.

    source tools/device_prelude.sh --peers && python3 tools/benchmarks/recurrent_delta.py --out $OUT

Writes ``log.txt``, ``results.json`` and ``table.md`` under --out; ``--plot results.json`` (on a machine with
matplotlib) draws ``docs/benchmarks/recurrent_delta.png`` from a results file.
"""
import argparse
import json
import math
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

LOG = []
DEV = 'cuda'
LOGFILE = None


def log(*a):
    s = ' '.join(str(x) for x in a)
    print(s, flush=True)
    LOG.append(s)
    if LOGFILE:
        with open(LOGFILE, 'a') as f:
            f.write(s + '\n')


def rel(a, b):
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float('inf')
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def make(B, N, H, K, V, gate, g_kind='random', dev=None, dtype=torch.float32, h0=True, nseq=None):
    dev = dev or DEV
    q = torch.randn(B, N, H, K, device=dev, dtype=torch.float64)
    k = F.normalize(torch.randn(B, N, H, K, device=dev, dtype=torch.float64), dim=-1)
    v = torch.randn(B, N, H, V, device=dev, dtype=torch.float64)
    beta = torch.rand(B, N, H, device=dev, dtype=torch.float64) * 0.9 + 0.05
    g = None
    if gate:
        if g_kind == 'random':
            g = -F.softplus(torch.randn(B, N, H, device=dev, dtype=torch.float64) * 2)
        elif g_kind == 'strong':
            g = torch.full((B, N, H), -20., device=dev, dtype=torch.float64)
        elif g_kind == 'weak':
            g = -torch.rand(B, N, H, device=dev, dtype=torch.float64) * 1e-4
        elif g_kind == 'mixed':
            g = torch.where(torch.rand(B, N, H, device=dev) < 0.3, torch.full((B, N, H), -20., device=dev,
                            dtype=torch.float64), -torch.rand(B, N, H, device=dev, dtype=torch.float64) * 1e-3)
    S = nseq or B
    init = torch.randn(S, H, K, V, device=dev, dtype=torch.float64) if h0 else None
    xs = [q, k, v, beta, g]
    xs = [None if x is None else x.to(dtype) for x in xs]
    return xs, (None if init is None else init.float())


def correctness(cases):
    from vla_mm.ops.delta_rule import delta_rule, delta_rule_recurrent
    from vla_mm.ops.delta_rule import chunk as C
    out = []
    for name, B, N, H, K, V, gate, g_kind, dtype, reverse, h0, cu in cases:
        t0 = time.time()
        nseq = None if cu is None else len(cu) - 1
        xs, init = make(B, N, H, K, V, gate, g_kind, dtype=dtype, h0=h0, nseq=nseq)
        cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32, device=DEV)
        do = torch.randn(B, N, H, V, device=DEV, dtype=torch.float64)
        dht = torch.randn(nseq or B, H, K, V, device=DEV, dtype=torch.float64)
        res = {}
        os.environ['VLA_OPS_POISON'] = '1'
        for which in ('tri', 'ref'):
            ins = [None if x is None else (x.double() if which == 'ref' else x).detach().requires_grad_()
                   for x in xs]
            h = None if init is None else (init.double() if which == 'ref' else init).detach().requires_grad_()
            fn = delta_rule if which == 'tri' else delta_rule_recurrent
            o, ht = fn(*ins, scale=None, initial_state=h, output_final_state=True, cu_seqlens=cu_t, reverse=reverse)
            ((o.double() * do).sum() + (ht.double() * dht).sum()).backward()
            d = {'o': o, 'ht': ht}
            for nm, x in zip(('dq', 'dk', 'dv', 'dbeta', 'dg', 'dh0'), ins + [h]):
                if x is not None:
                    d[nm] = x.grad
            res[which] = d
        os.environ['VLA_OPS_POISON'] = '0'
        errs = {n: rel(res['tri'][n], res['ref'][n]) for n in res['ref']}
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        ok = all(e < tol for e in errs.values())
        log(f'[check] {name:34s} {"PASS" if ok else "FAIL"} tol {tol:.0e} ' +
            ' '.join(f'{n}={e:.1e}' for n, e in errs.items()) + f'  ({time.time() - t0:.1f}s)')
        out.append({'case': name, 'ok': ok, 'tol': tol, 'errors': errs})
        del res
        torch.cuda.empty_cache()
    return out


def bench(fn, warmup=25, rep=100, grad_to_none=None):
    import triton
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, grad_to_none=grad_to_none, return_mode='median')


def timed_once(fn, n=2):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1))
    return sorted(ts)[len(ts) // 2]


def copy_bandwidth():
    x = torch.randn(256 * 1024 * 1024, device=DEV)  # 1 GiB
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    gbs = 2 * x.numel() * 4 / ms / 1e6
    del x, y
    return gbs


def fla_fns():
    try:
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        return chunk_delta_rule, chunk_gated_delta_rule
    except Exception as e:  # noqa
        log('[fla] import failed:', repr(e))
        return None, None


def run_op(kind, impl, q, k, v, beta, g, backward, do=None):
    """One forward (and backward) of ``impl`` in {'ours', 'fla', 'ref', 'sdpa'}."""
    if impl == 'ours':
        from vla_mm.ops.delta_rule import delta_rule
        o, _ = delta_rule(q, k, v, beta, g if kind == 'gated' else None)
    elif impl == 'fla':
        f_plain, f_gated = fla_fns()
        if kind == 'gated':
            o, _ = f_gated(q, k, v, g, beta)
        else:
            o, _ = f_plain(q, k, v, beta)
    elif impl == 'ref':
        from vla_mm.ops.delta_rule import delta_rule_recurrent
        o, _ = delta_rule_recurrent(q, k, v, beta, g if kind == 'gated' else None)
    elif impl == 'sdpa':
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    if backward:
        o.backward(do if impl != 'sdpa' else do.transpose(1, 2))
    return o


def bench_inputs(B, N, H, D, grad, dtype=torch.bfloat16):
    q = torch.randn(B, N, H, D, device=DEV, dtype=dtype)
    k = F.normalize(torch.randn(B, N, H, D, device=DEV, dtype=torch.float32), dim=-1).to(dtype)
    v = torch.randn(B, N, H, D, device=DEV, dtype=dtype)
    beta = torch.rand(B, N, H, device=DEV, dtype=dtype).clamp(0.05, 0.95)
    g = (-F.softplus(torch.randn(B, N, H, device=DEV, dtype=torch.float32))).to(dtype)
    xs = [q, k, v, beta, g]
    if grad:
        xs = [x.requires_grad_() for x in xs]
    do = torch.randn(B, N, H, D, device=DEV, dtype=dtype)
    return xs, do


def fla_crosscheck(B, N, H, D):
    """Our kernel vs fla 0.6.0 (bf16, same inputs): output and gradients, relative difference; and each of
    them vs the float64 reference on a small slice is covered by correctness()."""
    out = {}
    f_plain, f_gated = fla_fns()
    if f_plain is None:
        return {'error': 'fla not importable'}
    for kind in ('plain', 'gated'):
        xs, do = bench_inputs(B, N, H, D, grad=False)
        r = {}
        for impl in ('ours', 'fla'):
            ins = [x.detach().clone().requires_grad_() for x in xs]
            try:
                o = run_op(kind, impl, *ins, backward=False)
                r[impl] = {'o': o.detach()}
            except Exception as e:  # noqa
                r[impl] = {'fwd_error': f'{type(e).__name__}: {str(e)[:300]}'}
                continue
            try:
                o.backward(do)
                names = ['dq', 'dk', 'dv', 'dbeta'] + (['dg'] if kind == 'gated' else [])
                for nm, x in zip(names, ins):
                    r[impl][nm] = x.grad
            except Exception as e:  # noqa
                r[impl]['bwd_error'] = f'{type(e).__name__}: {str(e)[:300]}'
        res = {}
        if 'fwd_error' in r.get('fla', {}):
            res['fla_fwd_refused'] = r['fla']['fwd_error']
        if 'bwd_error' in r.get('fla', {}):
            res['fla_bwd_refused'] = r['fla']['bwd_error']
        for nm in ('o', 'dq', 'dk', 'dv', 'dbeta', 'dg'):
            if nm in r.get('ours', {}) and nm in r.get('fla', {}):
                res[nm] = rel(r['ours'][nm], r['fla'][nm])
        log(f'[fla-x] {kind:6s} B{B} N{N} H{H} D{D}: ' + json.dumps(
            {a: (f'{b:.2e}' if isinstance(b, float) else b) for a, b in res.items()}))
        out[kind] = res
    return out


def tune_sweep(B, N, H, D, quick=False):
    from vla_mm.ops.delta_rule import chunk as C
    base = dict(C.TUNE)
    variants = [
        ('default', {}),
        ('prep=rows', {'prep': 'rows'}),
        ('bv_state=32', {'bv_state': 32}),
        ('bv_state=64', {'bv_state': 64}),
        ('warps_grads=16', {'warps_grads': 16}),
        ('warps_state=8', {'warps_state': 8}),
        ('grads=fused', {'grads': 'fused'}),
    ]
    if quick:
        variants = [('default', {}), ('prep=rows', {'prep': 'rows'}), ('inv_prec=tf32', {'inv_prec': 'tf32'}),
                    ('inv_prec=subst', {'inv_prec': 'subst'})]
    out = {}
    xs, do = bench_inputs(B, N, H, D, grad=True)
    for name, ch in variants:
        C.TUNE.clear()
        C.TUNE.update(base)
        C.TUNE.update(ch)
        try:
            f = bench(lambda: run_op('gated', 'ours', *xs, backward=False))
            fb = bench(lambda: run_op('gated', 'ours', *xs, backward=True, do=do), grad_to_none=xs)
            out[name] = (f, fb)
            log(f'[tune] {name:16s} fwd {f:.3f} ms  fwd+bwd {fb:.3f} ms')
        except Exception as e:  # noqa
            log(f'[tune] {name} failed: {e!r}')
    C.TUNE.clear()
    C.TUNE.update(base)
    return out


def profile_kernels(B, N, H, D):
    from torch.profiler import ProfilerActivity, profile
    xs, do = bench_inputs(B, N, H, D, grad=True)
    for _ in range(3):
        run_op('gated', 'ours', *xs, backward=True, do=do)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            run_op('gated', 'ours', *xs, backward=True, do=do)
        torch.cuda.synchronize()
    tab = prof.key_averages().table(sort_by='cuda_time_total', row_limit=14)
    log('[profile] gated fwd+bwd x5, B%d N%d H%d D%d\n' % (B, N, H, D) + tab)
    return tab


def benchmark(shapes, copy_gbs, with_ref_at=4096):
    rows = []
    for (B, H, N, D) in shapes:
        for kind in ('plain', 'gated'):
            xs, do = bench_inputs(B, N, H, D, grad=True)
            el = 2
            tok = B * N * H
            # HBM floor: inputs read once, outputs written once.
            fwd_bytes = tok * (3 * D + 1 + (1 if kind == 'gated' else 0)) * el + tok * D * el
            n_gate = 1 if kind == 'gated' else 0
            bwd_bytes = tok * (4 * D + 1 + n_gate) * el + tok * (3 * D + 1 + n_gate) * el
            floor_f = fwd_bytes / copy_gbs / 1e6
            floor_fb = (fwd_bytes + bwd_bytes) / copy_gbs / 1e6
            row = {'B': B, 'H': H, 'N': N, 'D': D, 'kind': kind, 'floor_fwd_ms': floor_f, 'floor_fwdbwd_ms': floor_fb}
            for impl in ('ours', 'fla', 'sdpa', 'ref'):
                if impl == 'ref' and N != with_ref_at:
                    continue
                if impl == 'sdpa' and kind == 'gated':
                    # the same for both kinds; measured once per shape
                    row['sdpa_fwd_ms'] = rows[-1].get('sdpa_fwd_ms')
                    row['sdpa_fwdbwd_ms'] = rows[-1].get('sdpa_fwdbwd_ms')
                    continue
                try:
                    if impl == 'ref':
                        f = timed_once(lambda: run_op(kind, impl, *[x.detach() for x in xs], backward=False), n=1)
                        fb = timed_once(lambda: run_op(kind, impl, *xs, backward=True, do=do), n=1)
                    else:
                        f = bench(lambda: run_op(kind, impl, *[x.detach() for x in xs], backward=False))
                        fb = bench(lambda: run_op(kind, impl, *xs, backward=True, do=do), grad_to_none=xs)
                    row[f'{impl}_fwd_ms'] = f
                    row[f'{impl}_fwdbwd_ms'] = fb
                except Exception as e:  # noqa
                    row[f'{impl}_error'] = f'{type(e).__name__}: {str(e)[:200]}'
                for x in xs:
                    x.grad = None
                torch.cuda.empty_cache()
            log('[bench] ' + json.dumps({a: (round(b, 4) if isinstance(b, float) else b) for a, b in row.items()}))
            rows.append(row)
            del xs, do
            torch.cuda.empty_cache()
    return rows


def table(rows):
    def f(x):
        return '—' if x is None else f'{x:.3f}'

    lines = ['| B×H×N×D | op | ours fwd | ours f+b | fla fwd | fla f+b | SDPA fwd | SDPA f+b | ref fwd | ref f+b | '
             'HBM floor f / f+b | ours f+b ÷ fla | ref ÷ ours (f+b) | SDPA ÷ ours (f+b) | ours f+b ÷ floor |',
             '|' + '---|' * 15]
    for r in rows:
        o, fl, sd, rf = r.get('ours_fwdbwd_ms'), r.get('fla_fwdbwd_ms'), r.get('sdpa_fwdbwd_ms'), r.get('ref_fwdbwd_ms')
        lines.append(
            f"| {r['B']}×{r['H']}×{r['N']}×{r['D']} | {'DeltaNet' if r['kind'] == 'plain' else 'Gated DeltaNet'} | "
            f"{f(r.get('ours_fwd_ms'))} | {f(o)} | {f(r.get('fla_fwd_ms')) if 'fla_fwd_ms' in r else 'refused'} | "
            f"{f(fl) if fl else 'refused'} | {f(r.get('sdpa_fwd_ms'))} | {f(sd)} | "
            f"{f(r.get('ref_fwd_ms'))} | {f(rf)} | "
            f"{r['floor_fwd_ms']:.3f} / {r['floor_fwdbwd_ms']:.3f} | "
            f"{(o / fl) if (o and fl) else float('nan'):.2f} | {(rf / o) if (o and rf) else float('nan'):.0f} | "
            f"{(sd / o) if (o and sd) else float('nan'):.2f} | {o / r['floor_fwdbwd_ms'] if o else float('nan'):.1f} |")
    return '\n'.join(lines)


def plot(results_path, png):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    res = json.load(open(results_path))
    rows = res['bench']
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, mode in zip(axes, ('fwd', 'fwdbwd')):
        labels, series = [], {}
        for r in rows:
            labels.append(f"{'DN' if r['kind'] == 'plain' else 'GDN'}\n{r['B']}×{r['H']}×{r['N']}")
            for impl in ('ours', 'fla', 'sdpa', 'floor'):
                key = f'{impl}_{mode}_ms'
                series.setdefault(impl, []).append(r.get(key) or float('nan'))
        x = range(len(labels))
        w = 0.2
        names = {'ours': 'ours (Triton)', 'fla': 'fla 0.6.0 chunk', 'sdpa': 'SDPA causal', 'floor': 'HBM floor'}
        for i, impl in enumerate(('ours', 'fla', 'sdpa', 'floor')):
            ax.bar([xi + (i - 1.5) * w for xi in x], series[impl], w, label=names[impl])
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylabel('ms (median, do_bench)')
        ax.set_yscale('log')
        ax.set_title(f"{'forward' if mode == 'fwd' else 'forward + backward'}, bf16, {res.get('device', '')}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='.')
    ap.add_argument('--plot', default=None, help='results.json to plot (no GPU needed)')
    ap.add_argument('--png', default='docs/benchmarks/recurrent_delta.png')
    ap.add_argument('--smoke', action='store_true', help='CPU dry run of the script logic (tiny, reference path)')
    ap.add_argument('--quick', action='store_true',
                    help='re-run after a kernel change: smaller checks, 3 tuning variants, no step-reference timing')
    ap.add_argument('--skip', default='', help='comma list of: check,fla,tune,profile,bench')
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.png)
        return
    if args.smoke:
        global DEV
        DEV = 'cpu'
        res = correctness([('smoke GDN', 1, 70, 2, 16, 16, True, 'mixed', torch.float32, True, True, [0, 20, 70]),
                           ('smoke DN bf16', 2, 33, 1, 16, 16, False, 'random', torch.bfloat16, False, True, None)])
        fla_crosscheck(1, 64, 1, 16)
        fake = [{'B': 8, 'H': 12, 'N': 4096, 'D': 64, 'kind': kd, 'floor_fwd_ms': 0.07, 'floor_fwdbwd_ms': 0.2,
                 'ours_fwd_ms': 0.3, 'ours_fwdbwd_ms': 1.0, 'sdpa_fwd_ms': 0.5, 'sdpa_fwdbwd_ms': 1.5,
                 'ref_fwd_ms': 300., 'ref_fwdbwd_ms': 900., **({'fla_fwd_ms': 0.3, 'fla_fwdbwd_ms': 0.9}
                                                                if kd == 'plain' else {})} for kd in ('plain', 'gated')]
        print(table(fake))
        json.dump({'bench': fake, 'device': 'smoke'}, open('/tmp/smoke.json', 'w'))
        plot('/tmp/smoke.json', '/tmp/smoke.png')
        return
    import triton
    global LOGFILE
    os.makedirs(args.out, exist_ok=True)
    LOGFILE = os.path.join(args.out, 'log.txt')
    skip = set(args.skip.split(','))
    dev = torch.cuda.get_device_name(0)
    log(f'device {dev}, torch {torch.__version__}, triton {triton.__version__}')
    results = {'device': dev, 'torch': torch.__version__, 'triton': triton.__version__}
    t_all = time.time()

    def save():
        json.dump(results, open(os.path.join(args.out, 'results.json'), 'w'), indent=1, default=str)

    try:
        if args.quick and 'tune' not in skip:
            # tune first and adopt the fastest variant, so the checks below verify what the benchmark times
            from vla_mm.ops.delta_rule import chunk as C
            variants = {'default': {}, 'prep=rows': {'prep': 'rows'}, 'inv_prec=tf32': {'inv_prec': 'tf32'},
                        'inv_prec=subst': {'inv_prec': 'subst'}}
            results['tune'] = tune_sweep(8, 4096, 12, 64, quick=True)
            best = min(results['tune'], key=lambda n: results['tune'][n][1])
            C.TUNE.update(variants[best])
            results['tune_best'] = best
            log(f'[tune] adopted {best}: {C.TUNE}')
            save()
            skip.add('tune')
        if 'check' not in skip:
            f32, bf = torch.float32, torch.bfloat16
            cases = [
                # name, B, N, H, K, V, gate, g_kind, dtype, reverse, h0, cu_seqlens
                ('GDN fp32 N16384 fwd h0', 1, 16384, 2, 64, 64, True, 'random', f32, False, True, None),
                ('DN fp32 N16384 reverse h0', 1, 16384, 2, 64, 64, False, 'random', f32, True, True, None),
                ('GDN fp32 N4096 B2 reverse', 2, 4096, 3, 64, 64, True, 'random', f32, True, False, None),
                ('GDN fp32 N4096 strong(-20)', 1, 4096, 2, 64, 64, True, 'strong', f32, False, True, None),
                ('GDN fp32 N4096 weak', 1, 4096, 2, 64, 64, True, 'weak', f32, True, True, None),
                ('GDN fp32 N4096 mixed', 1, 4096, 2, 64, 64, True, 'mixed', f32, False, True, None),
                ('GDN fp32 varlen reverse', 1, 8192, 2, 64, 64, True, 'random', f32, True, True,
                 [0, 1000, 1001, 4197, 8192]),
                ('DN fp32 K128 V96 N1000', 1, 1000, 2, 128, 96, False, 'random', f32, False, True, None),
                ('GDN bf16 N16384', 1, 16384, 2, 64, 64, True, 'random', bf, False, True, None),
                ('DN bf16 N4096 B2 reverse', 2, 4096, 2, 64, 64, False, 'random', bf, True, True, None),
            ]
            if args.quick:
                cases = [
                    ('GDN fp32 N4096 mixed h0', 1, 4096, 2, 64, 64, True, 'mixed', f32, False, True, None),
                    ('DN fp32 N4096 reverse h0', 1, 4096, 2, 64, 64, False, 'random', f32, True, True, None),
                    ('GDN fp32 varlen reverse', 1, 4096, 2, 64, 64, True, 'random', f32, True, True,
                     [0, 1000, 1001, 2500, 4096]),
                    ('GDN bf16 N4096 B2 reverse', 2, 4096, 2, 64, 64, True, 'random', bf, True, True, None),
                    ('DN bf16 N4096', 1, 4096, 2, 64, 64, False, 'random', bf, False, True, None),
                ]
            results['check'] = correctness(cases)
            save()
        bw = copy_bandwidth()
        results['copy_GBps'] = bw
        log(f'[copy] device-to-device copy {bw:.0f} GB/s (read + write)')
        if 'bench' not in skip:
            results['bench'] = benchmark([(8, 12, 4096, 64), (2, 12, 16384, 64)], bw,
                                         with_ref_at=-1 if args.quick else 4096)
            save()
            t = table(results['bench'])
            open(os.path.join(args.out, 'table.md'), 'w').write(t + '\n')
            log(t)
        if 'profile' not in skip:
            results['profile'] = profile_kernels(8, 4096, 12, 64)
            save()
        if 'fla' not in skip:
            results['fla_crosscheck'] = fla_crosscheck(8, 4096, 12, 64)
            save()
        if 'tune' not in skip:
            results['tune'] = tune_sweep(8, 4096, 12, 64, quick=args.quick)
            save()
    except Exception:
        log(traceback.format_exc())
    log(f'total {time.time() - t_all:.0f}s')
    save()


if __name__ == '__main__':
    main()
