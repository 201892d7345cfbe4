"""GPU correctness at full sizes + fla 0.6.0 cross-check + benchmark of ops/gla, ops/hgrn, ops/gsa (one process).

    source tools/device_prelude.sh --peers && python3 tools/benchmarks/recurrent_gla.py --out $OUT

1. correctness on the GPU's Triton: forward, final state and the gradients of every input against the
   step-by-step reference in float64 (on the GPU), N up to 16384, both directions, packed sequences,
   strong (log a = -20) and weak (log a = -1e-4) decay. Kernel outputs start NaN-filled (POISON).
2. cross-check against flash-linear-attention 0.6.0 for every op it runs (refusals are caught and reported).
3. bf16 timings at 8x12x4096x64 and 2x12x16384x64 (triton.testing.do_bench medians; no input set fits in
   the 50 MB L2): ours, the step-by-step PyTorch reference (N = 4096, one timed run), causal SDPA
   (FlashAttention) and fla where it runs, against the HBM floor = bytes (inputs read once, outputs written
   once) / measured device-to-device copy bandwidth. A torch.profiler kernel breakdown of the gated core.
Writes log.txt, results.json, recurrent_gla.md and recurrent_gla.png under --out.

Parts (--parts, comma-separated): precompile (all kernel specializations in parallel processes), main, extra
(correctness), ab (A path against the sub-block path), bench_nofla (default: ours, SDPA, reference) or bench (adds fla timings: its autotuning takes
several minutes of device time), fla (output cross-check against fla), profile; light variants:
precompile_light, main_light, bench_min, bench_noref (ours and SDPA only), bench_fla_vector (gla vector and hgrn against fla). The default (~5 minutes on an H100) leaves out fla.
"""
import argparse
import json
import os
import time
import traceback

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from vla_mm.ops.gla import chunk as gla_chunk
from vla_mm.ops.gla import chunk_gla, gla_recurrent_reference
from vla_mm.ops.gsa import gsa, gsa_recurrent_reference
from vla_mm.ops.hgrn import hgrn, hgrn_recurrent_reference
from vla_mm.ops.hgrn import scan as hgrn_scan

LOG = []
OUT = ['.']
RESULTS = {'correctness': [], 'fla': [], 'bench': [], 'env': {}}
T0 = time.time()


def log(*a):
    s = ' '.join(str(x) for x in a)
    print(s, flush=True)
    LOG.append(s)
    with open(os.path.join(OUT[0], 'log.txt'), 'a') as f:
        f.write(s + '\n')


def save():
    with open(os.path.join(OUT[0], 'results.json'), 'w') as f:
        json.dump(RESULTS, f, indent=1)


def rel(a, b):
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float('inf')
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def elapsed():
    return f'[{time.time() - T0:6.1f}s]'


# ------------------------------------------------------------------------------------------------------------
# 1. correctness
# ------------------------------------------------------------------------------------------------------------
def gla_inputs(B, N, H, K, V, gate, u, h0, nseq, dtype, strength=None, dev='cuda'):
    q, k = torch.randn(B, N, H, K, device=dev), torch.randn(B, N, H, K, device=dev)
    v = torch.randn(B, N, H, V, device=dev)
    g = None
    if gate != 'none':
        shape = (B, N, H) if gate == 'scalar' else (B, N, H, K)
        if strength is None:
            g = F.logsigmoid(torch.randn(shape, device=dev) + 2.0)
        else:
            g = strength * (0.5 + torch.rand(shape, device=dev))
    ins = {'q': q, 'k': k, 'v': v, 'g': g, 'u': torch.randn(H, K, device=dev) if u else None,
           'h0': torch.randn(nseq, H, K, V, device=dev) if h0 else None}
    return {n: (t.to(dtype) if t is not None else None) for n, t in ins.items()}


def check_gla(name, B, N, H, K, V, dtype, gate='vector', u=False, h0=False, final=False, reverse=False, cu=None,
              strength=None, quiet=False):
    nseq = B if cu is None else len(cu) - 1
    cus = torch.tensor(cu, dtype=torch.int32, device='cuda') if cu is not None else None
    ins = gla_inputs(B, N, H, K, V, gate, u, h0, nseq, dtype, strength)
    live = {n: t.requires_grad_(True) for n, t in ins.items() if t is not None}
    o, ht = chunk_gla(ins['q'], ins['k'], ins['v'], ins['g'], u=ins['u'], initial_state=ins['h0'],
                      output_final_state=final, cu_seqlens=cus, reverse=reverse)
    do = torch.randn_like(o)
    loss = (o.float() * do.float()).sum()
    if final:
        dht = torch.randn_like(ht)
        loss = loss + (ht * dht).sum()
    grads = torch.autograd.grad(loss, list(live.values()))
    torch.cuda.synchronize()
    if quiet:
        return
    ref = {n: t.detach().double().requires_grad_(True) for n, t in live.items()}
    o2, ht2 = gla_recurrent_reference(ref['q'], ref['k'], ref['v'], gk=ref.get('g'), u=ref.get('u'),
                                      initial_state=ref.get('h0'), output_final_state=final, cu_seqlens=cus,
                                      reverse=reverse)
    loss2 = (o2 * do.double()).sum()
    if final:
        loss2 = loss2 + (ht2 * dht.double()).sum()
    grads2 = torch.autograd.grad(loss2, list(ref.values()))
    errs = {'o': rel(o, o2)}
    if final:
        errs['ht'] = rel(ht, ht2)
    errs.update({'d' + n: rel(a, b) for n, a, b in zip(live, grads, grads2)})
    record(name, dtype, errs)


def check_hgrn(name, B, N, D, dtype, h0=False, reverse=False, strength=None, gated=True):
    x = torch.randn(B, N, D, device='cuda')
    g = F.logsigmoid(torch.randn(B, N, D, device='cuda') + 2.) if strength is None else \
        strength * (0.5 + torch.rand(B, N, D, device='cuda'))
    ins = [x, g] + ([torch.randn(B, D, device='cuda')] if h0 else [])
    ins = [t.to(dtype).requires_grad_(True) for t in ins]
    o, ht = hgrn(ins[0], ins[1], initial_state=ins[2] if h0 else None, output_final_state=True, reverse=reverse,
                 gated_input=gated)
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    gr = torch.autograd.grad((o.float() * do.float()).sum() + (ht * dht).sum(), ins)
    ref = [t.detach().double().requires_grad_(True) for t in ins]
    o2, ht2 = hgrn_recurrent_reference(ref[0], ref[1], initial_state=ref[2] if h0 else None,
                                       output_final_state=True, reverse=reverse, gated_input=gated)
    gr2 = torch.autograd.grad((o2 * do.double()).sum() + (ht2 * dht.double()).sum(), ref)
    errs = {'o': rel(o, o2), 'ht': rel(ht, ht2)}
    errs.update({n: rel(a, b) for n, a, b in zip(['dx', 'dg', 'dh0'], gr, gr2)})
    record(name, dtype, errs)


def gsa_inputs(B, N, H, K, V, M, dtype, dev='cuda'):
    q, k = torch.randn(B, N, H, K, device=dev), torch.randn(B, N, H, K, device=dev)
    v = torch.randn(B, N, H, V, device=dev)
    s = torch.randn(B, N, H, M, device=dev).softmax(-1)
    g = F.logsigmoid(torch.randn(B, N, H, M, device=dev) + 3.)
    return [t.to(dtype) for t in (q, k, v, s, g)]


def check_gsa(name, B, N, H, K, V, M, dtype, h0=False, reverse=False):
    ins = gsa_inputs(B, N, H, K, V, M, dtype)
    if h0:
        ins += [0.1 * torch.randn(B, H, K, M, device='cuda'), 0.1 * torch.randn(B, H, M, V, device='cuda')]
    ins = [t.requires_grad_(True) for t in ins]
    o, (hk, hv) = gsa(*ins[:5], initial_state=(ins[5], ins[6]) if h0 else None, output_final_state=True,
                      reverse=reverse)
    do, d1, d2 = torch.randn_like(o), torch.randn_like(hk), torch.randn_like(hv)
    gr = torch.autograd.grad((o.float() * do.float()).sum() + (hk * d1).sum() + (hv * d2).sum(), ins)
    ref = [t.detach().double().requires_grad_(True) for t in ins]
    o2, (hk2, hv2) = gsa_recurrent_reference(*ref[:5], initial_state=(ref[5], ref[6]) if h0 else None,
                                             output_final_state=True, reverse=reverse)
    gr2 = torch.autograd.grad((o2 * do.double()).sum() + (hk2 * d1.double()).sum() + (hv2 * d2.double()).sum(),
                              ref)
    errs = {'o': rel(o, o2), 'hk': rel(hk, hk2), 'hv': rel(hv, hv2)}
    errs.update({n: rel(a, b) for n, a, b in zip(['dq', 'dk', 'dv', 'ds', 'dg', 'dhk0', 'dhv0'], gr, gr2)})
    record(name, dtype, errs)


def record(name, dtype, errs):
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    ok = all(e < tol for e in errs.values())
    worst = max(errs, key=lambda n: errs[n])
    log(f'{elapsed()} {"PASS" if ok else "FAIL"} {name} [{str(dtype)[6:]}, tol {tol:g}] worst {worst}='
        f'{errs[worst]:.2e} | ' + ' '.join(f'{n}={e:.1e}' for n, e in errs.items()))
    RESULTS['correctness'].append({'name': name, 'dtype': str(dtype), 'tol': tol, 'pass': ok, 'errs': errs})
    save()


def run_correctness(which):
    bf, f32 = torch.bfloat16, torch.float32
    cases = {
        'main': [
            ('gla vector 2x4x4096x64', lambda: check_gla('gla vector N=4096', 2, 4096, 4, 64, 64, bf)),
            ('gla vector fp32 N=16384 reverse h0 final',
             lambda: check_gla('gla vector N=16384 reverse h0 final', 1, 16384, 2, 64, 64, f32, h0=True,
                               final=True, reverse=True)),
            ('gla scalar fp32', lambda: check_gla('gla scalar N=4096 reverse h0 final', 2, 4096, 2, 64, 64, f32,
                                                  gate='scalar', h0=True, final=True, reverse=True)),
            ('gla rwkv6', lambda: check_gla('gla vector+u (rwkv6) N=4096', 2, 4096, 2, 64, 64, bf, u=True)),
            ('gla final bf16', lambda: check_gla('gla vector N=4096 reverse h0 final', 2, 4096, 4, 64, 64, bf,
                                                 h0=True, final=True, reverse=True)),
            ('gla none', lambda: check_gla('gla none (linear attn) N=4096', 2, 4096, 2, 64, 64, bf, gate='none')),
            ('hgrn fp32', lambda: check_hgrn('hgrn N=16384 reverse h0', 1, 16384, 256, f32, h0=True, reverse=True)),
            ('hgrn bf16', lambda: check_hgrn('hgrn 2x4096x768', 2, 4096, 768, bf)),
            ('gsa bf16', lambda: check_gsa('gsa M=64 N=4096', 2, 4096, 4, 64, 64, 64, bf)),
        ],
        'light': [
            ('gla vector bf16', lambda: check_gla('gla vector N=4096', 2, 4096, 4, 64, 64, bf)),
            ('gla scalar fp32', lambda: check_gla('gla scalar N=2048 reverse h0 final', 2, 2048, 2, 64, 64, f32,
                                                  gate='scalar', h0=True, final=True, reverse=True)),
            ('gla scalar strong', lambda: check_gla('gla scalar log a=-20 reverse', 1, 2048, 2, 64, 64, f32,
                                                    gate='scalar', h0=True, final=True, reverse=True, strength=-20.)),
            ('gla rwkv6', lambda: check_gla('gla vector+u (rwkv6) N=2048', 2, 2048, 2, 64, 64, bf, u=True)),
            ('gsa bf16', lambda: check_gsa('gsa M=64 N=2048', 2, 2048, 4, 64, 64, 64, bf)),
        ],
        'extra': [
            ('gla strong', lambda: check_gla('gla vector log a=-20 reverse', 1, 2048, 2, 64, 64, f32, h0=True,
                                             final=True, reverse=True, strength=-20.)),
            ('gla weak', lambda: check_gla('gla vector log a=-1e-4 reverse', 1, 2048, 2, 64, 64, f32, h0=True,
                                           final=True, reverse=True, strength=-1e-4)),
            ('gla scalar strong', lambda: check_gla('gla scalar log a=-20 reverse', 2, 2048, 2, 64, 64, f32,
                                                    gate='scalar', h0=True, final=True, reverse=True, strength=-20.)),
            ('gla varlen', lambda: check_gla('gla vector varlen [197,1024,2875]', 1, 4096, 2, 64, 64,
                                             torch.bfloat16, h0=True, final=True, cu=[0, 197, 1221, 4096])),
            ('gsa fp32', lambda: check_gsa('gsa N=4096 reverse h0', 1, 4096, 2, 64, 64, 32, f32, h0=True,
                                           reverse=True)),
            ('hgrn strong', lambda: check_hgrn('hgrn log a=-20', 1, 2048, 128, f32, h0=True, strength=-20.)),
            ('hgrn weak', lambda: check_hgrn('hgrn log a=-1e-4', 1, 2048, 128, f32, h0=True, strength=-1e-4)),
        ]}[which]
    for name, fn in cases:
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            log(f'{elapsed()} ERROR {name}: {type(e).__name__}: {e}')
            log(traceback.format_exc()[-1500:])
            RESULTS['correctness'].append({'name': name, 'pass': False, 'error': repr(e)[:300]})
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------------
# 2. fla cross-check
# ------------------------------------------------------------------------------------------------------------
def fla_try(name, ours_fn, fla_fn, inputs):
    """Run fla forward and backward separately; report refusals; compare output and grads with ours."""
    ins1 = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    ins2 = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    o1 = ours_fn(*ins1)
    do = torch.randn_like(o1)
    g1 = torch.autograd.grad(o1, [t for t in ins1 if t.requires_grad], do)
    entry = {'op': name}
    try:
        o2 = fla_fn(*ins2)
        entry['fwd_rel'] = rel(o2, o1)
    except Exception as e:  # noqa: BLE001
        entry['fwd'] = f'refused: {type(e).__name__}: {str(e)[:200]}'
        log(f'{elapsed()} fla {name}: forward {entry["fwd"]}')
        RESULTS['fla'].append(entry)
        return
    try:
        g2 = torch.autograd.grad(o2, [t for t in ins2 if t.requires_grad], do)
        entry['grad_rel'] = [rel(a, b) for a, b in zip(g2, g1)]
    except Exception as e:  # noqa: BLE001
        entry['bwd'] = f'refused: {type(e).__name__}: {str(e)[:200]}'
    log(f'{elapsed()} fla {name}: ' + json.dumps(entry))
    RESULTS['fla'].append(entry)
    save()


def run_fla():
    try:
        import fla  # noqa: F401
        from fla.ops.gla import chunk_gla as fla_gla
        from fla.ops.gsa import chunk_gsa as fla_gsa
        from fla.ops.hgrn import chunk_hgrn as fla_hgrn
        from fla.ops.linear_attn import chunk_linear_attn as fla_la
        from fla.ops.retention import chunk_retention as fla_ret
        from fla.ops.rwkv6 import chunk_rwkv6 as fla_rwkv6
        from fla.ops.simple_gla import chunk_simple_gla as fla_sgla
    except Exception as e:  # noqa: BLE001
        log(f'fla import failed: {e}')
        return
    from vla_mm.ops.gla import chunk_retention, chunk_rwkv6, chunk_simple_gla
    B, N, H, D = 2, 2048, 4, 64
    bf = torch.bfloat16
    i = gla_inputs(B, N, H, D, D, 'vector', True, False, B, bf)
    gs = F.logsigmoid(torch.randn(B, N, H, device='cuda') + 2.).to(bf)
    jobs = [
        ('chunk_gla', lambda q, k, v, g: chunk_gla(q, k, v, g)[0],
         lambda q, k, v, g: fla_gla(q, k, v, g)[0], [i['q'], i['k'], i['v'], i['g']]),
        ('chunk_simple_gla', lambda q, k, v, g: chunk_simple_gla(q, k, v, g)[0],
         lambda q, k, v, g: fla_sgla(q, k, v, g=g)[0], [i['q'], i['k'], i['v'], gs]),
        ('chunk_retention', lambda q, k, v: chunk_retention(q, k, v)[0],
         lambda q, k, v: fla_ret(q, k, v)[0], [i['q'], i['k'], i['v']]),
        ('chunk_linear_attn (normalize=False)', lambda q, k, v: chunk_gla(q, k, v)[0],
         lambda q, k, v: fla_la(q, k, v, normalize=False)[0], [i['q'], i['k'], i['v']]),
        ('chunk_rwkv6', lambda r, k, v, w, u: chunk_rwkv6(r, k, v, w, u)[0],
         lambda r, k, v, w, u: fla_rwkv6(r, k, v, w, u, scale=1.0)[0],
         [i['q'] * 0.25, i['k'] * 0.25, i['v'], i['g'], i['u']]),
        ('chunk_hgrn (ungated input)', lambda x, g: hgrn(x, g, gated_input=False)[0],
         lambda x, g: fla_hgrn(x, g)[0],
         [torch.randn(B, N, H * D, device='cuda', dtype=bf),
          F.logsigmoid(torch.randn(B, N, H * D, device='cuda') + 2.).to(bf)]),
        ('chunk_gsa', lambda q, k, v, s, g: gsa(q, k, v, s, g)[0],
         lambda q, k, v, s, g: fla_gsa(q, k, v, s, g)[0], gsa_inputs(B, N, H, D, D, 64, bf)),
    ]
    for name, ours, theirs, ins in jobs:
        try:
            fla_try(name, ours, theirs, ins)
        except Exception as e:  # noqa: BLE001
            log(f'{elapsed()} fla {name}: ERROR {type(e).__name__}: {str(e)[:300]}')
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------------------
# 3. benchmark
# ------------------------------------------------------------------------------------------------------------
def bench(fn, rep=200):
    return do_bench(fn, warmup=25, rep=rep, return_mode='median')


def time_once(fn):
    fn()
    torch.cuda.synchronize()
    t = time.time()
    fn()
    torch.cuda.synchronize()
    return (time.time() - t) * 1e3


REF_STEPS = 256


def time_once1(fn):
    torch.cuda.synchronize()
    t = time.time()
    fn()
    torch.cuda.synchronize()
    return (time.time() - t) * 1e3


def fwd_bwd(fn, ins):
    def run():
        o = fn(*ins)
        torch.autograd.grad(o, [t for t in ins if t.requires_grad], torch.ones_like(o) * 1e-2)
    return run


def copy_bw():
    x = torch.randn(1 << 29, device='cuda', dtype=torch.bfloat16)   # 1 GiB
    y = torch.empty_like(x)
    t = bench(lambda: y.copy_(x), rep=100)
    bw = 2 * x.numel() * 2 / (t * 1e-3)
    del x, y
    torch.cuda.empty_cache()
    return bw


def run_bench(bw, shapes, ref_n, with_fla=True, only=None):
    bf = torch.bfloat16
    try:
        if not with_fla:
            raise ImportError('fla timings skipped (its autotuning takes minutes of device time)')
        from fla.ops.gla import chunk_gla as fla_gla
        from fla.ops.gsa import chunk_gsa as fla_gsa
        from fla.ops.hgrn import chunk_hgrn as fla_hgrn
        from fla.ops.simple_gla import chunk_simple_gla as fla_sgla
        have_fla = True
    except Exception:  # noqa: BLE001
        have_fla = False
    for (B, H, N, D) in shapes:
        E = B * N * H * D * 2
        sdpa_in = [torch.randn(B, H, N, D, device='cuda', dtype=bf).requires_grad_() for _ in range(3)]
        sdpa = (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        t_sdpa = (bench(lambda: sdpa(*sdpa_in)), bench(fwd_bwd(sdpa, sdpa_in)))
        del sdpa_in
        i = gla_inputs(B, N, H, D, D, 'vector', False, False, B, bf)
        q, k, v, g = (i[n].requires_grad_() for n in ('q', 'k', 'v', 'g'))
        gsc = F.logsigmoid(torch.randn(B, N, H, device='cuda') + 2.).to(bf).requires_grad_()
        x = torch.randn(B, N, H * D, device='cuda', dtype=bf).requires_grad_()
        gx = F.logsigmoid(torch.randn(B, N, H * D, device='cuda') + 2.).to(bf).requires_grad_()
        gsa_in = [t.requires_grad_() for t in gsa_inputs(B, N, H, D, D, 64, bf)]
        fams = [
            ('gla vector', lambda q, k, v, g: chunk_gla(q, k, v, g)[0], [q, k, v, g], 5, 10,
             (lambda q, k, v, g: fla_gla(q, k, v, g)[0]) if have_fla else None,
             lambda q, k, v, g: gla_recurrent_reference(q, k, v, gk=g)[0]),
            ('gla scalar', lambda q, k, v, g: chunk_gla(q, k, v, g)[0], [q, k, v, gsc], 4, 8,
             (lambda q, k, v, g: fla_sgla(q, k, v, g=g)[0]) if have_fla else None,
             lambda q, k, v, g: gla_recurrent_reference(q, k, v, gk=g)[0]),
            ('hgrn', lambda x, g: hgrn(x, g)[0], [x, gx], 3, 6,
             (lambda x, g: fla_hgrn(x, g)[0]) if have_fla else None,
             lambda x, g: hgrn_recurrent_reference(x, g)[0]),
            ('gsa M=64', lambda *a: gsa(*a)[0], gsa_in, 6, 12,
             (lambda *a: fla_gsa(*a)[0]) if have_fla else None,
             lambda *a: gsa_recurrent_reference(*a)[0]),
        ]
        if only is not None:
            fams = [f for f in fams if f[0] in only]
        for name, ours, ins, nf, nfb, theirs, ref in fams:
            row = {'family': name, 'shape': [B, H, N, D], 'sdpa_fwd': t_sdpa[0], 'sdpa_fwdbwd': t_sdpa[1],
                   'floor_fwd': nf * E / bw * 1e3, 'floor_fwdbwd': nfb * E / bw * 1e3}
            try:
                row['ours_fwd'] = bench(lambda: ours(*ins))
                row['ours_fwdbwd'] = bench(fwd_bwd(ours, ins))
            except Exception as e:  # noqa: BLE001
                row['ours_error'] = repr(e)[:300]
                log(traceback.format_exc()[-1500:])
            if theirs is not None:
                for key, f in (('fla_fwd', lambda: theirs(*ins)), ('fla_fwdbwd', fwd_bwd(theirs, ins))):
                    try:
                        row[key] = bench(f)
                    except Exception as e:  # noqa: BLE001
                        row[key + '_error'] = f'{type(e).__name__}: {str(e)[:120]}'
            if N == ref_n:
                # the step-by-step reference is launch-bound and linear in N: timed once on the first
                # REF_STEPS tokens and scaled by N / REF_STEPS (a full run at N=4096 takes ~46 s)
                try:
                    short = [t.detach()[:, :REF_STEPS].contiguous().requires_grad_() for t in ins]
                    row['ref_fwdbwd'] = time_once1(fwd_bwd(ref, short)) * N / REF_STEPS
                except Exception as e:  # noqa: BLE001
                    row['ref_error'] = repr(e)[:200]
            log(f'{elapsed()} bench ' + json.dumps({k2: (round(v2, 4) if isinstance(v2, float) else v2)
                                                     for k2, v2 in row.items()}))
            RESULTS['bench'].append(row)
            save()
            torch.cuda.empty_cache()


def _profiled(f, iters=5):
    """torch.profiler (CUDA activity) over ``iters`` calls of f after one warm-up call."""
    from torch.profiler import ProfilerActivity, profile
    f()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            f()
        torch.cuda.synchronize()
    return prof


PROFILE_BWD_FP32 = (True, )  # (True, False): also the cost and the bf16 errors without fp32 backward operands


def run_profile():
    """Per-kernel CUDA time of fwd+bwd at 8x12x4096x64 bf16 (gla vector, gla scalar, gsa M=64), with the
    backward's fp32 operands on (default) and off (gla_chunk.BWD_FP32), and the bf16 accuracy of the latter."""
    B, H, N, D = 8, 12, 4096, 64
    cases = []
    for gate in ('vector', 'scalar'):
        i = gla_inputs(B, N, H, D, D, gate, False, False, B, torch.bfloat16)
        ins = [i[n].requires_grad_() for n in ('q', 'k', 'v', 'g')]
        cases.append((f'gla {gate}', fwd_bwd(lambda q, k, v, g: chunk_gla(q, k, v, g)[0], ins)))
    gsa_in = [t.requires_grad_() for t in gsa_inputs(B, N, H, D, D, 64, torch.bfloat16)]
    cases.append(('gsa M=64', fwd_bwd(lambda *a: gsa(*a)[0], gsa_in)))
    for fp32 in PROFILE_BWD_FP32:
        gla_chunk.BWD_FP32 = fp32
        for name, f in cases:
            prof = _profiled(f)
            tab = prof.key_averages().table(sort_by='cuda_time_total', row_limit=12)
            RESULTS.setdefault('profile', {})[f'{name} bwd_fp32={fp32}'] = {
                e.key: e.device_time_total / 5e3 for e in prof.key_averages()}
            log(f'{elapsed()} profile {name} fwd+bwd 8x12x4096x64 bf16, BWD_FP32={fp32} (5 iterations):\n' + tab)
            log(f'  {name} BWD_FP32={fp32}: fwd+bwd {bench(f):.3f} ms')
        gla_chunk.POISON = True
        check_gla(f'gla vector N=4096 BWD_FP32={fp32}', 2, 4096, 4, 64, 64, torch.bfloat16)
        check_gsa(f'gsa M=64 N=4096 BWD_FP32={fp32}', 2, 4096, 4, 64, 64, 64, torch.bfloat16)
        gla_chunk.POISON = False
    gla_chunk.BWD_FP32 = True
    save()


SWEEP_LAUNCH = [{}, {'inter': dict(num_warps=8)}, {'intra': dict(num_warps=8)}, {'intra': dict(num_warps=2)},
                {'fwd_A': dict(num_stages=1)}, {'fwd_A': dict(num_warps=8)},
                {'fwd_oA': dict(num_warps=8), 'dvA': dict(num_warps=8), 'dA': dict(num_warps=8)},
                {'fwd_oA': dict(num_stages=2), 'dvA': dict(num_stages=2), 'dA': dict(num_stages=2)},
                {'intra': dict(num_stages=1), 'fwd_A': dict(num_warps=2)}]


def run_ab():
    """A path (intra-chunk matrices formed once per pass) against the sub-block path, same process, bf16."""
    RESULTS.setdefault('ab', [])
    for gate, u in (('vector', False), ('scalar', False), ('none', False), ('vector', True)):
        i = gla_inputs(8, 4096, 12, 64, 64, gate, u, False, 8, torch.bfloat16)
        ins = [i[n].requires_grad_() for n in ('q', 'k', 'v', 'g', 'u') if i[n] is not None]
        if gate == 'none':
            def fn(q, k, v, *a):
                return chunk_gla(q, k, v, None, u=a[0] if a else None)[0]
        else:
            def fn(q, k, v, g, *a):
                return chunk_gla(q, k, v, g, u=a[0] if a else None)[0]
        res = {}
        for ap in (True, False):
            gla_chunk.A_PATH = ap
            res[ap] = (bench(fwd_bwd(fn, ins)), bench(lambda: fn(*ins)))
        gla_chunk.A_PATH = True
        RESULTS['ab'].append(dict(gate=gate, u=u, a_fwd_bwd=res[True][0], a_fwd=res[True][1],
                                  sub_fwd_bwd=res[False][0], sub_fwd=res[False][1]))
        log(f'{elapsed()} ab {gate} u={u}: A path fwd+bwd {res[True][0]:.3f} fwd {res[True][1]:.3f} | '
            f'sub-block path fwd+bwd {res[False][0]:.3f} fwd {res[False][1]:.3f} ms')
    save()


def run_sweep():
    """Launch options of the three chunk kernels (gla vector, 8x12x4096x64 bf16: per-kernel CUDA time), then the
    fp32-operand precision of the backward (tf32 / 3xtf32): bf16 accuracy of gla vector and GSA, and time."""
    B, H, N, D = 8, 12, 4096, 64
    i = gla_inputs(B, N, H, D, D, 'vector', False, False, B, torch.bfloat16)
    ins = [i[n].requires_grad_() for n in ('q', 'k', 'v', 'g')]
    f = fwd_bwd(lambda q, k, v, g: chunk_gla(q, k, v, g)[0], ins)
    gsa_in = [t.requires_grad_() for t in gsa_inputs(B, N, H, D, D, 64, torch.bfloat16)]
    fg = fwd_bwd(lambda *a: gsa(*a)[0], gsa_in)
    out = RESULTS.setdefault('sweep', [])
    for cfg in SWEEP_LAUNCH:
        gla_chunk.LAUNCH = cfg
        try:
            prof = _profiled(f)
            ker = {e.key: round(e.device_time_total / 5e3, 4) for e in prof.key_averages() if e.key.startswith('_')}
            row = dict(launch=repr(cfg), fwdbwd=bench(f), kernels=ker)
        except Exception as e:  # noqa: BLE001
            row = dict(launch=repr(cfg), error=repr(e)[:300])
        out.append(row)
        log(f'{elapsed()} sweep {json.dumps(row)}')
        save()
    gla_chunk.LAUNCH = {}
    for prec in ('tf32', 'tf32x3'):
        gla_chunk.F32_OPERANDS = prec
        row = dict(f32_operands=prec, gla_fwdbwd=bench(f), gsa_fwdbwd=bench(fg))
        gla_chunk.POISON = True
        check_gla(f'gla vector N=4096 f32_operands={prec}', 2, 4096, 4, 64, 64, torch.bfloat16)
        check_gsa(f'gsa M=64 N=4096 f32_operands={prec}', 2, 4096, 4, 64, 64, 64, torch.bfloat16)
        gla_chunk.POISON = False
        out.append(row)
        log(f'{elapsed()} sweep {json.dumps(row)}')
        save()
    gla_chunk.F32_OPERANDS = 'tf32'


# ------------------------------------------------------------------------------------------------------------
def write_report(bw):
    rows = RESULTS['bench']
    lines = ['| family | B×H×N×D | ours fwd | ours fwd+bwd | fla fwd | fla fwd+bwd | SDPA fwd | SDPA fwd+bwd | '
             'HBM floor fwd / fwd+bwd | ours/floor (fwd+bwd) | step ref fwd+bwd (extrapolated) |',
             '|' + '---|' * 11]

    def f(r, k):
        v = r.get(k)
        if v is None:
            return 'refused' if (k + '_error') in r else '-'
        return f'{v:.3f}'
    for r in rows:
        ratio = (r['ours_fwdbwd'] / r['floor_fwdbwd']) if 'ours_fwdbwd' in r else float('nan')
        lines.append(f"| {r['family']} | {'×'.join(map(str, r['shape']))} | {f(r, 'ours_fwd')} | "
                     f"{f(r, 'ours_fwdbwd')} | {f(r, 'fla_fwd')} | {f(r, 'fla_fwdbwd')} | {f(r, 'sdpa_fwd')} | "
                     f"{f(r, 'sdpa_fwdbwd')} | {r['floor_fwd']:.3f} / {r['floor_fwdbwd']:.3f} | {ratio:.1f}× | "
                     f"{f(r, 'ref_fwdbwd')} |")
    md = '\n'.join([f'copy bandwidth {bw / 1e12:.2f} TB/s (read+write); times in ms (medians)', ''] + lines)
    with open(os.path.join(OUT[0], 'recurrent_gla.md'), 'w') as fh:
        fh.write(md + '\n')
    log(md)
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(13, 5))
        keys = [('ours_fwdbwd', 'ours'), ('fla_fwdbwd', 'fla'), ('sdpa_fwdbwd', 'causal SDPA'),
                ('floor_fwdbwd', 'HBM floor'), ('ref_fwdbwd', 'step reference')]
        w = 0.16
        for j, (k, lab) in enumerate(keys):
            xs = [n + (j - 2) * w for n in range(len(rows))]
            ys = [r.get(k, 0) or 0 for r in rows]
            ax.bar(xs, ys, w, label=lab)
        ax.set_yscale('log')
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([f"{r['family']}\n{'x'.join(map(str, r['shape']))}" for r in rows], fontsize=7)
        ax.set_ylabel('forward+backward, ms (log)')
        ax.set_title('bf16 forward+backward on H100 (missing bar = refused / not run)')
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(OUT[0], 'recurrent_gla.png'), dpi=110)
    except Exception as e:  # noqa: BLE001
        log(f'plot failed: {e}')


# ------------------------------------------------------------------------------------------------------------
# compile every kernel specialization the run uses in parallel worker processes (Triton's on-disk cache is
# shared), on tiny shapes whose integer arguments specialize like the real ones (divisible by 16, not 1)
PRECOMPILE = [
    ('gla', dict(gate='vector')), ('gla', dict(gate='scalar')), ('gla', dict(gate='none')),
    ('gla', dict(gate='vector', u=True)),
    ('gla', dict(gate='vector', fp32=True, reverse=True, h0=True, final=True)),
    ('gla', dict(gate='scalar', fp32=True, reverse=True, h0=True, final=True)),
    ('gla', dict(gate='vector', varlen=True, h0=True, final=True)),
    ('gsa', dict()), ('gsa', dict(fp32=True, reverse=True, h0=True)),
    ('hgrn', dict(fp32=True, reverse=True, h0=True)), ('hgrn', dict()), ('hgrn', dict(gated=False)),
]


PRECOMPILE_LIGHT = [
    ('gla', dict(gate='vector')), ('gla', dict(gate='scalar')), ('gla', dict(gate='vector', u=True)),
    ('gla', dict(gate='scalar', fp32=True, reverse=True, h0=True, final=True)),
    ('gsa', dict()), ('hgrn', dict()),
]


def _compile_job(job):
    fam, o = job
    try:
        dt = torch.float32 if o.get('fp32') else torch.bfloat16
        B, N, H = 1, 1024, 4
        if fam == 'gla':
            cu = [0, 100, 1024] if o.get('varlen') else None
            check_gla('precompile', B, N, H, 64, 64, dt, gate=o['gate'], u=o.get('u', False), h0=o.get('h0', False),
                      final=o.get('final', False), reverse=o.get('reverse', False), cu=cu, quiet=True)
        elif fam == 'gsa':
            ins = [t.requires_grad_() for t in gsa_inputs(B, N, H, 64, 64, 64, dt)]
            st = (torch.zeros(B, H, 64, 64, device='cuda', dtype=dt), torch.zeros(B, H, 64, 64, device='cuda',
                                                                               dtype=dt)) if o.get('h0') else None
            out, fin = gsa(*ins, initial_state=st, output_final_state=o.get('h0', False),
                           reverse=o.get('reverse', False))
            out.float().sum().backward()
        else:
            x = torch.randn(B, N, 256, device='cuda', dtype=dt, requires_grad=True)
            g = F.logsigmoid(torch.randn(B, N, 256, device='cuda')).to(dt).requires_grad_()
            h0 = torch.zeros(B, 256, device='cuda', dtype=dt) if o.get('h0') else None
            out, _ = hgrn(x, g, initial_state=h0, reverse=o.get('reverse', False), gated_input=o.get('gated', True))
            out.float().sum().backward()
        torch.cuda.synchronize()
        return f'{fam} {o}: ok'
    except Exception as e:  # noqa: BLE001
        return f'{fam} {o}: {type(e).__name__}: {str(e)[:300]}'


def precompile(jobs):
    import multiprocessing as mp
    with mp.get_context('spawn').Pool(min(12, len(jobs))) as pool:
        for r in pool.imap_unordered(_compile_job, jobs):
            log(f'{elapsed()} precompile {r}')


def guarded(fn, *args, report=None, **kwargs):
    """Run one part: a failure is logged, not fatal (the later parts still run); ``report`` (the copy bandwidth)
    rewrites the report afterwards."""
    try:
        fn(*args, **kwargs)
    except Exception:  # noqa: BLE001
        log(traceback.format_exc()[-2000:])
    if report is not None:
        write_report(report)


def run_bench_min(bw):
    """Smallest useful run: one float64 check of the bf16 gated core, then ours vs SDPA (no reference, no fla)."""
    run_bench(bw, [(8, 12, 4096, 64)], -1, with_fla=False, only=('gla vector',))
    write_report(bw)
    gla_chunk.POISON = True
    check_gla('gla vector N=2048', 1, 2048, 2, 64, 64, torch.bfloat16)
    gla_chunk.POISON = False
    run_bench(bw, [(2, 12, 16384, 64)], -1, with_fla=False, only=('gla vector',))
    write_report(bw)
    run_bench(bw, [(8, 12, 4096, 64), (2, 12, 16384, 64)], -1, with_fla=False, only=('hgrn', 'gsa M=64'))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default='.')
    ap.add_argument('--parts', default='precompile,main,bench_nofla,extra,profile')
    args = ap.parse_args()
    OUT[0] = args.out
    os.makedirs(args.out, exist_ok=True)
    gla_chunk.POISON = True
    hgrn_scan.POISON = True
    import triton
    RESULTS['env'] = {'device': torch.cuda.get_device_name(0), 'torch': torch.__version__,
                      'triton': triton.__version__}
    log(json.dumps(RESULTS['env']))
    bw = copy_bw()
    RESULTS['env']['copy_bw'] = bw
    log(f'copy bandwidth {bw / 1e12:.3f} TB/s')
    parts = args.parts.split(',')
    if 'precompile' in parts:
        precompile(PRECOMPILE)
    if 'precompile_light' in parts:
        precompile(PRECOMPILE_LIGHT)
    if 'main' in parts:
        run_correctness('main')
    if 'main_light' in parts:
        run_correctness('light')
    gla_chunk.POISON = False
    hgrn_scan.POISON = False
    both = [(8, 12, 4096, 64), (2, 12, 16384, 64)]
    if 'bench_min' in parts:
        guarded(run_bench_min, bw, report=bw)
    if 'bench_noref' in parts:  # ours and SDPA only (no step reference, no fla): quick re-timing after a change
        guarded(run_bench, bw, both, -1, with_fla=False, report=bw)
    if 'bench_fla_vector' in parts:  # gla vector: ours against fla's chunk_gla in this process (fla autotunes)
        guarded(run_bench, bw, [(8, 12, 4096, 64)], -1, with_fla=True, only=('gla vector', 'hgrn'), report=bw)
    if 'bench' in parts or 'bench_nofla' in parts:
        guarded(run_bench, bw, both, 4096, with_fla='bench' in parts, report=bw)
    if 'fla' in parts:
        run_fla()
    if 'extra' in parts:
        gla_chunk.POISON = True
        hgrn_scan.POISON = True
        run_correctness('extra')
        gla_chunk.POISON = False  # (NaN-filled output buffers cost time: never on during timings)
        hgrn_scan.POISON = False
    if 'ab' in parts:
        guarded(run_ab)
    if 'sweep' in parts:
        run_sweep()
    if 'profile' in parts:
        guarded(run_profile)
    n_fail = sum(1 for c in RESULTS['correctness'] if not c.get('pass'))
    log(f'{elapsed()} done: {len(RESULTS["correctness"])} correctness cases, {n_fail} failing')
    save()


if __name__ == '__main__':
    main()
