"""GPU correctness at full sizes + benchmark of ops/linear_attn (non-causal linear attention), one process.

    source tools/device_prelude.sh --peers && python3 tools/benchmarks/linear_attn.py --out $OUT

1. correctness: forward and dq/dk/dv of the Triton kernels against the float64 reference on the GPU, at the
   benchmark shapes and for every option (outputs NaN-poisoned first); run-to-run spread of the fp32 atomics.
2. a small launch-config sweep (block rows, warps, stages, programs per SM) at 8x12x4096 and 1x12x65536.
3. bf16 timings (triton.testing.do_bench medians; do_bench flushes L2 before every call, and shapes whose
   inputs fit in L2 also rotate over several input sets): Triton, the PyTorch reference (einsum, fp32 inside),
   F.scaled_dot_product_attention (FlashAttention), fla's chunk_linear_attn when it runs (causal: a scale
   reference only), and the HBM floor = bytes / measured device-to-device copy bandwidth. Peak memory of
   forward+backward. A torch.profiler kernel breakdown.
Writes log.txt, results.json, linear_attn.md and linear_attn.png under --out.
"""
import argparse
import json
import math
import os
import time
import traceback

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from vla_mm.ops.linear_attn import linear_attn, linear_attn_reference
from vla_mm.ops.linear_attn import kernel as lak

SHAPES = [(64, 6, 196, 64), (16, 12, 1024, 64), (8, 12, 4096, 64), (2, 12, 16384, 64), (1, 12, 65536, 64)]
LOG = []
LOG_PATH = [None]


def log(*a):
    s = ' '.join(str(x) for x in a)
    print(s, flush=True)
    LOG.append(s)
    if LOG_PATH[0]:
        with open(LOG_PATH[0], 'a') as f:
            f.write(s + '\n')


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------------------------
# 1. correctness
# ------------------------------------------------------------------------------------------------------------
def make(B, N, H, K, V, dtype, opts, dev='cuda', scale=1.0):
    if opts.get('noncontig'):
        x = torch.randn(B, N, H, 2 * K + V, device=dev, dtype=dtype) * scale
        q, k, v = x[..., :K], x[..., K:2 * K], x[..., 2 * K:]
    else:
        q = torch.randn(B, N, H, K, device=dev, dtype=dtype) * scale
        k = torch.randn(B, N, H, K, device=dev, dtype=dtype) * scale
        v = torch.randn(B, N, H, V, device=dev, dtype=dtype) * scale
    if opts.get('positive'):
        q, k = q.abs() + 0.5, k.abs() + 0.5
    kw = {n: opts[n] for n in ('feature_map', 'normalize', 'scale', 'eps', 'focus_power', 'norm') if n in opts}
    if 'rope' in opts:
        shape = {'nk': (N, K // 2), 'nhk': (N, H, K // 2)}[opts['rope']]
        ang = torch.rand(*shape, device=dev, dtype=torch.float64) * 6.3
        kw['rope'] = (ang.cos().float(), ang.sin().float())
    if opts.get('mask'):
        m = torch.rand(B, N, device=dev) > 0.3
        m[:, 0] = True
        kw['key_padding_mask'] = m
    if 'cu' in opts:
        kw['cu_seqlens'] = torch.tensor(opts['cu'], dtype=torch.int32, device=dev)
    return q, k, v, kw


def check(name, B, N, H, K, V, dtype, opts, scale=1.0):
    q, k, v, kw = make(B, N, H, K, V, dtype, opts, scale=scale)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    o = linear_attn(q, k, v, **kw)
    g = torch.randn_like(o)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), g)
    kw64 = dict(kw)
    if 'rope' in kw64:
        kw64['rope'] = tuple(t.double() for t in kw64['rope'])
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = linear_attn_reference(q64, k64, v64, **kw64)
    rq, rk, rv = torch.autograd.grad(ref, (q64, k64, v64), g.double())
    errs = dict(o=rel(o, ref), dq=rel(dq, rq), dk=rel(dk, rk), dv=rel(dv, rv))
    finite = all(torch.isfinite(t).all().item() for t in (o, dq, dk, dv))
    ok = finite and all(e < tol for e in errs.values())
    # run-to-run spread (fp32 atomics in the state reductions)
    o2 = linear_attn(q.detach(), k.detach(), v.detach(), **kw)
    spread = rel(o2, o)
    log(f'{"PASS" if ok else "FAIL"} {name:42s} {str(dtype)[6:]:8s} ' +
        ' '.join(f'{n}={e:.2e}' for n, e in errs.items()) + f' finite={finite} rerun_diff={spread:.1e} tol={tol}')
    del q, k, v, o, dq, dk, dv, ref, rq, rk, rv, q64, k64, v64
    torch.cuda.empty_cache()
    return dict(name=name, dtype=str(dtype), errs=errs, finite=finite, ok=ok, rerun_diff=spread)


def correctness(quick=False):
    bf, f32, f16 = torch.bfloat16, torch.float32, torch.float16
    cases = []
    for (B, H, N, D) in SHAPES:
        cases.append((f'{B}x{H}x{N}x{D} elu1', B, N, H, D, D, bf, dict(feature_map='elu1')))
    cases += [
        ('8x12x4096x64 elu1 fp32', 8, 4096, 12, 64, 64, f32, dict(feature_map='elu1')),
        ('1x12x65536x64 focused fp32', 1, 65536, 12, 64, 64, f32, dict(feature_map='focused')),
        ('4x12x4096x64 focused', 4, 4096, 12, 64, 64, bf, dict(feature_map='focused')),
        ('4x12x4096x64 relu unnorm', 4, 4096, 12, 64, 64, bf, dict(feature_map='relu', normalize=False)),
        ('4x12x4096x64 identity unnorm', 4, 4096, 12, 64, 64, bf, dict(feature_map='identity', normalize=False)),
        ('4x12x4096x64 identity positive', 4, 4096, 12, 64, 64, f32, dict(feature_map='identity', positive=True)),
        ('4x12x4096x64 elu1 linfusion', 4, 4096, 12, 64, 64, bf, dict(norm='linfusion', eps=1e-4)),
        ('4x12x4096x64 elu1 rope(N,H,K/2)', 4, 4096, 12, 64, 64, bf, dict(rope='nhk')),
        ('4x12x4096x64 focused rope fp32', 4, 4096, 12, 64, 64, f32, dict(feature_map='focused', rope='nk')),
        ('4x12x4096x64 elu1 mask', 4, 4096, 12, 64, 64, bf, dict(mask=True)),
        ('1x12x8000x64 varlen', 1, 8000, 12, 64, 64, bf, dict(cu=[0, 196, 1220, 1221, 5316, 8000])),
        ('1x12x8000x64 varlen fp32 unnorm', 1, 8000, 12, 64, 64, f32,
         dict(cu=[0, 196, 1220, 1221, 5316, 8000], normalize=False)),
        ('3x5x1031x48/80 ragged', 3, 1031, 5, 48, 80, f32, dict(feature_map='focused', focus_power=2.5)),
        ('2x4x1031x128 V128', 2, 1031, 4, 128, 128, bf, dict()),
        ('2x4x2000x256 V256 fp32', 2, 2000, 4, 256, 256, f32, dict(feature_map='relu')),
        ('2x4x2000x32/256', 2, 2000, 4, 32, 256, bf, dict(feature_map='focused')),
        ('8x12x4096x64 fused-qkv non-contig', 8, 4096, 12, 64, 64, bf, dict(noncontig=True)),
    ]
    if quick:   # the main shape and the cases that did not fit in shared memory in the first GPU run
        keep = ('8x12x4096x64 elu1', '4x12x4096x64 focused rope fp32', '3x5x1031x48/80 ragged', '2x4x1031x128 V128',
                '2x4x2000x256 V256 fp32', '2x4x2000x32/256', '1x12x8000x64 varlen', '4x12x4096x64 elu1 mask')
        cases = [c for c in cases if c[0] in keep]
    res = []
    lak._POISON = True
    for c in cases:
        try:
            res.append(check(*c))
        except Exception as e:
            log(f'ERROR {c[0]}: {e!r}')
            traceback.print_exc()
            res.append(dict(name=c[0], ok=False, error=repr(e)))
    for dt, sc in (() if quick else ((bf, 1e3), (f16, 3e2))):
        for fm in ('elu1', 'focused'):
            try:
                res.append(check(f'large x{sc:g} 8x12x4096 {fm}', 8, 4096, 12, 64, 64, dt, dict(feature_map=fm),
                                 scale=sc))
            except Exception as e:
                log(f'ERROR large {dt} {fm}: {e!r}')
                res.append(dict(name=f'large {dt} {fm}', ok=False, error=repr(e)))
    lak._POISON = False
    log(f'correctness: {sum(r["ok"] for r in res)}/{len(res)} passed')
    return res


# ------------------------------------------------------------------------------------------------------------
# 2./3. timing
# ------------------------------------------------------------------------------------------------------------
def bench(fn, grads=None):
    return do_bench(fn, warmup=25, rep=100, grad_to_none=grads, return_mode='median')


def copy_bandwidth():
    x = torch.randn(256 * 1024 * 1024, device='cuda', dtype=torch.bfloat16)   # 512 MiB
    y = torch.empty_like(x)
    t = bench(lambda: y.copy_(x))
    bw = 2 * x.numel() * 2 / (t * 1e-3)
    del x, y
    return bw


class Rot:
    """Rotate over several input sets when one set fits in L2 (do_bench also flushes L2 before each call)."""

    def __init__(self, sets):
        self.sets, self.i = sets, 0

    def next(self):
        s = self.sets[self.i % len(self.sets)]
        self.i += 1
        return s


def make_sets(B, H, N, D, n_sets, layout='bnhd'):
    sets = []
    for _ in range(n_sets):
        if layout == 'bnhd':
            t = [torch.randn(B, N, H, D, device='cuda', dtype=torch.bfloat16).requires_grad_() for _ in range(3)]
            do = torch.randn(B, N, H, D, device='cuda', dtype=torch.bfloat16)
        else:
            t = [torch.randn(B, H, N, D, device='cuda', dtype=torch.bfloat16).requires_grad_() for _ in range(3)]
            do = torch.randn(B, H, N, D, device='cuda', dtype=torch.bfloat16)
        sets.append((*t, do))
    return sets


def time_impl(fwd, B, H, N, D, layout='bnhd'):
    """(forward ms, forward+backward ms, peak extra MiB of forward+backward) of fwd(q, k, v) -> o."""
    one = 4 * B * H * N * D * 2
    n_sets = 4 if one < 50e6 else 1
    rot = Rot(make_sets(B, H, N, D, n_sets, layout))
    grads = [t for s in rot.sets for t in s[:3]]

    def f_fwd():
        q, k, v, _ = rot.next()
        with torch.no_grad():
            fwd(q, k, v)

    def f_fb():
        q, k, v, do = rot.next()
        fwd(q, k, v).backward(do)

    t_f = bench(f_fwd)
    t_fb = bench(f_fb, grads)
    for t in grads:
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    q, k, v, do = rot.sets[0]
    fwd(q, k, v).backward(do)
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    for t in grads:
        t.grad = None
    del rot, grads
    torch.cuda.empty_cache()
    return t_f, t_fb, peak


def fla_fn():
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except Exception as e:
        return None, f'fla not importable: {e!r}'

    def f(q, k, v):
        out = chunk_linear_attn(q, k, v, normalize=False)
        return out[0] if isinstance(out, tuple) else out
    try:
        q = torch.randn(1, 256, 2, 64, device='cuda', dtype=torch.bfloat16)
        f(q, q, q)
        torch.cuda.synchronize()
    except Exception as e:
        return None, f'fla chunk_linear_attn raised: {e!r}'[:300]
    return f, 'ok'


def sweep():
    """Chunking of N (programs per SM for the atomic-reduction kernels F1/B1 and the streaming F2/B2); the block
    shapes were swept in the first GPU run (docs/benchmarks/linear_attn.md): BN=128, 8 warps, 2 stages."""
    rows = []
    shapes = [(8, 12, 4096, 64), (1, 12, 65536, 64)]
    sets = [make_sets(B, H, N, D, 1)[0] for (B, H, N, D) in shapes]

    def measure():
        tot_f = tot_fb = 0.0
        for q, k, v, do in sets:
            with torch.no_grad():
                tot_f += bench(lambda: linear_attn(q, k, v))
            tot_fb += bench(lambda: linear_attn(q, k, v).backward(do), [q, k, v])
        return tot_f, tot_fb

    best = None
    for pr in (2, 4, 8):
        for pm in (4, 16):
            lak.CONFIG.update(programs_per_sm_reduce=pr, programs_per_sm_map=pm)
            tf, tfb = measure()
            rows.append(dict(programs_per_sm_reduce=pr, programs_per_sm_map=pm, fwd_ms=tf, fb_ms=tfb))
            log(f'sweep pps_reduce={pr} pps_map={pm}: fwd {tf:.4f} ms  fwd+bwd {tfb:.4f} ms (sum of 2 shapes)')
            if best is None or tf + tfb < best[0]:
                best = (tf + tfb, pr, pm)
    cfg = dict(programs_per_sm_reduce=best[1], programs_per_sm_map=best[2])
    lak.CONFIG.update(cfg)
    log(f'chosen config: {dict(lak.CONFIG)}')
    del sets
    torch.cuda.empty_cache()
    return rows, cfg


def host_overhead():
    """Host (CPU) time per call, no synchronisation inside the loop, tiny shape: what launches cost."""
    q, k, v, do = make_sets(1, 1, 64, 64, 1)[0]
    res = {}

    def t(name, fn, n=300):
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        res[name] = (t1 - t0) / n * 1e6
        log(f'host {name:40s} {res[name]:8.1f} us/call')

    from vla_mm.ops.linear_attn import _check_args

    t('check_args', lambda: _check_args(q, k, v, 'elu1', True, None, 1e-6, 3.0, None, 'standard', None, None))
    t('_Plan (uncached)', lambda: lak._Plan(q, v, 'elu1', True, None, 1e-6, 3.0, None, 'standard', None, None))
    plan = lak._Plan(q, v, 'elu1', True, None, 1e-6, 3.0, None, 'standard', None, None)
    t('_forward (zeros + 2 launches)', lambda: lak._forward(q, k, v, plan))
    o, S, z = lak._forward(q, k, v, plan)
    t('_backward (zeros + 2 launches)', lambda: lak._backward(q, k, v, do, S, z, plan))
    t('torch.zeros(small)', lambda: torch.zeros(4160, device='cuda'))
    with torch.no_grad():
        t('linear_attn fwd (no grad)', lambda: linear_attn(q, k, v))
    t('linear_attn fwd+bwd', lambda: linear_attn(q, k, v).backward(do))
    x = torch.randn(64, device='cuda')
    t('torch add (reference launch)', lambda: x.add(1.0))
    return res


def profile_breakdown(B, H, N, D):
    q, k, v, do = make_sets(B, H, N, D, 1)[0]
    for _ in range(3):
        linear_attn(q, k, v).backward(do)
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile
    iters = 10
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            linear_attn(q, k, v).backward(do)
            q.grad = k.grad = v.grad = None
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, 'device_time_total', None)
        if t is None:
            t = getattr(e, 'cuda_time_total', 0)
        if t > 0 and e.count >= iters:
            rows.append((e.key[:60], t / iters / 1e3, e.count // iters))
    rows.sort(key=lambda r: -r[1])
    log(f'profile {B}x{H}x{N}x{D} fwd+bwd, per iteration:')
    for name, ms, cnt in rows[:10]:
        log(f'   {ms * 1e3:8.1f} us  x{cnt}  {name}')
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='.')
    ap.add_argument('--skip-correctness', action='store_true')
    ap.add_argument('--no-sweep', action='store_true')
    ap.add_argument('--quick-correctness', action='store_true')
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    LOG_PATH[0] = os.path.join(args.out, 'log.txt')
    t0 = time.time()
    dev = torch.cuda.get_device_name(0)
    log(f'device {dev}, torch {torch.__version__}, triton {triton.__version__}, '
        f'SMs {torch.cuda.get_device_properties(0).multi_processor_count}')
    results = dict(device=dev, torch=torch.__version__, triton=triton.__version__)
    if not args.skip_correctness:
        results['correctness'] = correctness(args.quick_correctness)
        log(f'[{time.time() - t0:.0f}s]')
    if not args.no_sweep:
        try:
            results['sweep'], results['config'] = sweep()
        except Exception as e:
            log(f'sweep failed: {e!r}')
            traceback.print_exc()
        log(f'[{time.time() - t0:.0f}s]')
    results['config_used'] = dict(lak.CONFIG)
    try:
        results['host_us'] = host_overhead()
    except Exception as e:
        log(f'host overhead failed: {e!r}')
        traceback.print_exc()
    bw = copy_bandwidth()
    log(f'device-to-device copy: {bw / 1e12:.3f} TB/s (read + write)')
    results['copy_TBps'] = bw / 1e12
    fla, fla_status = fla_fn()
    log(f'fla: {fla_status}')
    results['fla_status'] = fla_status
    impls = [('triton', lambda q, k, v: linear_attn(q, k, v), 'bnhd'),
             ('reference', lambda q, k, v: linear_attn_reference(q, k, v), 'bnhd'),
             ('sdpa', lambda q, k, v: F.scaled_dot_product_attention(q, k, v), 'bhnd')]
    if fla is not None:
        impls.append(('fla_chunk_causal', fla, 'bnhd'))
    rows = []
    for (B, H, N, D) in SHAPES:
        elems = B * H * N * D
        floor_f = 4 * elems * 2 / bw * 1e3
        floor_fb = 11 * elems * 2 / bw * 1e3
        row = dict(shape=f'{B}x{H}x{N}x{D}', B=B, H=H, N=N, D=D, floor_fwd_ms=floor_f, floor_fb_ms=floor_fb)
        for name, fn, layout in impls:
            try:
                tf, tfb, peak = time_impl(fn, B, H, N, D, layout)
            except Exception as e:
                log(f'{name} {B}x{H}x{N}x{D}: {e!r}'[:300])
                tf = tfb = peak = float('nan')
                torch.cuda.empty_cache()
            row[f'{name}_fwd_ms'], row[f'{name}_fb_ms'], row[f'{name}_peak_MiB'] = tf, tfb, peak
        rows.append(row)
        log(f"{row['shape']:16s} fwd: triton {row['triton_fwd_ms']:.4f} ref {row['reference_fwd_ms']:.4f} "
            f"sdpa {row['sdpa_fwd_ms']:.4f} floor {floor_f:.4f} | fwd+bwd: triton {row['triton_fb_ms']:.4f} "
            f"ref {row['reference_fb_ms']:.4f} sdpa {row['sdpa_fb_ms']:.4f} floor {floor_fb:.4f} | peak MiB "
            f"triton {row['triton_peak_MiB']:.0f} ref {row['reference_peak_MiB']:.0f}")
    results['bench'] = rows
    log(f'[{time.time() - t0:.0f}s]')
    try:
        results['profile_8x12x4096'] = profile_breakdown(8, 12, 4096, 64)
        results['profile_1x12x65536'] = profile_breakdown(1, 12, 65536, 64)
    except Exception as e:
        log(f'profile failed: {e!r}')
    # summary table
    md = ['| shape B×H×N×D | fwd Triton ms | fwd floor ms | fwd/floor | fwd ref ms | fwd SDPA ms | '
          'f+b Triton ms | f+b floor ms | f+b/floor | f+b ref ms | ref/Triton | f+b SDPA ms | peak MiB Triton / ref |',
          '|' + '---|' * 13]
    for r in rows:
        md.append(f"| {r['shape']} | {r['triton_fwd_ms']:.4f} | {r['floor_fwd_ms']:.4f} | "
                  f"{r['triton_fwd_ms'] / r['floor_fwd_ms']:.2f} | {r['reference_fwd_ms']:.4f} | "
                  f"{r['sdpa_fwd_ms']:.4f} | {r['triton_fb_ms']:.4f} | {r['floor_fb_ms']:.4f} | "
                  f"{r['triton_fb_ms'] / r['floor_fb_ms']:.2f} | {r['reference_fb_ms']:.4f} | "
                  f"{r['reference_fb_ms'] / r['triton_fb_ms']:.1f} | {r['sdpa_fb_ms']:.4f} | "
                  f"{r['triton_peak_MiB']:.0f} / {r['reference_peak_MiB']:.0f} |")
    if fla is not None:
        md.append('')
        md.append('fla chunk_linear_attn (causal, unnormalized; scale reference only): ' + ', '.join(
            f"{r['shape']} fwd {r.get('fla_chunk_causal_fwd_ms', float('nan')):.4f} / "
            f"f+b {r.get('fla_chunk_causal_fb_ms', float('nan')):.4f} ms" for r in rows))
    for line in md:
        log(line)
    with open(os.path.join(args.out, 'linear_attn.md'), 'w') as f:
        f.write('\n'.join(md) + '\n')
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
        names = [r['shape'] for r in rows]
        x = list(range(len(rows)))
        for ax, key, title in ((axes[0], 'fwd', 'forward'), (axes[1], 'fb', 'forward + backward')):
            series = [('triton', 'Triton (ours)'), ('reference', 'PyTorch reference'), ('sdpa', 'SDPA (flash)')]
            if fla is not None:
                series.append(('fla_chunk_causal', 'fla chunk (causal)'))
            w = 0.8 / (len(series) + 1)
            for i, (k_, lab) in enumerate(series):
                ax.bar([xi + i * w for xi in x], [r[f'{k_}_{key}_ms'] for r in rows], w, label=lab)
            ax.bar([xi + len(series) * w for xi in x], [r[f'floor_{key}_ms'] for r in rows], w,
                   label='HBM floor', color='k', alpha=0.35)
            ax.set_xticks([xi + 0.4 - w / 2 for xi in x])
            ax.set_xticklabels(names, rotation=15, fontsize=8)
            ax.set_yscale('log')
            ax.set_ylabel('ms (median)')
            ax.set_title(f'non-causal linear attention, bf16, {title}')
            ax.legend(fontsize=7)
        fig.suptitle(dev, fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, 'linear_attn.png'), dpi=120)
    except Exception as e:
        log(f'plot failed: {e!r}')
    log(f'total {time.time() - t0:.0f}s')
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == '__main__':
    main()
