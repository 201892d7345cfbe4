"""Triton kernels of LayerNorm / RMSNorm over the last dimension (forward and backward), optionally times
``swish(gate)`` (the gated output norm of GLA, RetNet, HGRN, ...).

x is seen as ``[M, C]`` rows (row stride ``sx``, unit column stride). Forward: one program per ``BM`` rows,
statistics in fp32, ``y = (x - mean) * rstd * w + b`` (RMSNorm: ``y = x * rstd * w``; gated: times
``gate * sigmoid(gate)``) written straight in the output dtype (under autocast the bf16 the next matmul reads, so no separate cast pass); mean and rstd ``[M]``
fp32 are kept for the backward. Backward: by default persistent, ``progs_per_sm`` programs per SM each looping
over a contiguous range of ``BM``-row tiles (H100, [32768, 768] fp32 x: fwd + bwd 0.21 ms against torch's 0.48;
one program per tile, ``progs_per_sm=None``, took 0.73 ms: docs/benchmarks/benchmarks.md, session 11). Either way
``dx`` per row, and the weight / bias gradients summed over the program's rows in fp32, written as one partial
row per program and summed over programs by the host (no atomics: repeatable bits).
"""
from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..common.launch import jit
from ..common.options import cdiv, current_options, declare_launch, next_power_of_2, num_sms, rows_of

MAX_C = 65536
MIN_ROWS_BWD = 4  # rows of one backward program at least (partial weight / bias rows <= 1/4 of x's)
# launch settings per pass (kernel_options(launch={'norm_fwd' | 'norm_bwd': {...}}) overrides them): elements of one
# [BM, BC] register tile (backward None: SMALL_C_TILE elements where 256 < C <= 512, else 2048), warps (None:
# forward 8 from 2048 elements, else 4; backward 8 elements a thread, 4-16 warps), backward programs per SM (a
# number: persistent programs looping over rows; None: one per tile) and the stages of that row loop (1: none)
LAUNCH_DEFAULTS = MappingProxyType(dict(
    norm_fwd=MappingProxyType(dict(tile=4096, num_warps=None)),
    norm_bwd=MappingProxyType(dict(tile=None, num_warps=None, progs_per_sm=4, loop_stages=1))))
# backward tile at 256 < C <= 512: 2048 elements leave half the persistent programs waiting for registers (docs/ops.md)
SMALL_C_TILE = 1024
declare_launch(LAUNCH_DEFAULTS['norm_fwd'], 'norm_fwd')
declare_launch(LAUNCH_DEFAULTS['norm_bwd'], 'norm_bwd')


@jit
def _ln_fwd_kernel(x, w, b, gate, y, mean, rstd, res, s_out, M, C, sx, sg, sy, sr, ss, eps,
                   RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, GATE: tl.constexpr,
                   RES: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
    rows = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    cols = tl.arange(0, BC)
    rm, cm = rows < M, cols < C
    msk = rm[:, None] & cm[None, :]
    xv = tl.load(x + rows[:, None] * sx + cols[None, :], mask=msk, other=0.0).to(tl.float32)
    if RES:  # pre-norm residual: s = x + res is normalized and written (the next residual stream)
        xv = xv + tl.load(res + rows[:, None] * sr + cols[None, :], mask=msk, other=0.0).to(tl.float32)
        xv = xv.to(s_out.dtype.element_ty).to(tl.float32)  # s as stored: what torch's add then norm would see
        tl.store(s_out + rows[:, None] * ss + cols[None, :], xv.to(s_out.dtype.element_ty), mask=msk)
    if RMS:
        mu = tl.zeros([BM], dtype=tl.float32)
        xc = xv
    else:
        mu = tl.sum(xv, axis=1) / C
        xc = tl.where(cm[None, :], xv - mu[:, None], 0.0)
    rs = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / C + eps)
    yv = xc * rs[:, None]
    if HAS_W:
        yv = yv * tl.load(w + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        yv = yv + tl.load(b + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
    if GATE:
        z = tl.load(gate + rows[:, None] * sg + cols[None, :], mask=msk, other=0.0).to(tl.float32)
        yv = yv * z * tl.sigmoid(z)
    tl.store(y + rows[:, None] * sy + cols[None, :], yv.to(y.dtype.element_ty), mask=msk)
    tl.store(mean + rows, mu, mask=rm)
    tl.store(rstd + rows, rs, mask=rm)


@triton.jit
def _ln_bwd_tile(x, b, gate, dy, dx, dgate, ds, dx2, mean, rstd, wv, r0, end, C, sx, sg, sdy, sdx, sdg, sds, sdx2,
                 RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr, GATE: tl.constexpr,
                 HAS_DS: tl.constexpr, DX2: tl.constexpr, SAME_STRIDES: tl.constexpr, BM: tl.constexpr,
                 BC: tl.constexpr):
    """dx (and dgate) of rows ``r0 + [0, BM)`` below ``end``, plus ``ds`` (the gradient reaching the pre-norm sum
    directly) and written again to ``dx2`` in its dtype (the residual's two inputs); returns the rows' ``dy * xhat``
    and ``dy`` tiles."""
    base = tl.cast(r0, tl.int64)  # int64 row base, int32 offsets inside the tile
    r = tl.arange(0, BM)
    cols = tl.arange(0, BC)
    cm = cols < C
    rm = r0 + r < end
    msk = rm[:, None] & cm[None, :]
    off = r[:, None] * sx + cols[None, :]
    if SAME_STRIDES:  # contiguous rows everywhere: one offset tile for every tensor
        off_dy, off_dx, off_g, off_ds, off_dx2 = off, off, off, off, off
    else:
        off_dy = r[:, None] * sdy + cols[None, :]
        off_dx = r[:, None] * sdx + cols[None, :]
        off_g = r[:, None] * sg + cols[None, :]
        off_ds = r[:, None] * sds + cols[None, :]
        off_dx2 = r[:, None] * sdx2 + cols[None, :]
    xv = tl.load(x + base * sx + off, mask=msk, other=0.0).to(tl.float32)
    g = tl.load(dy + base * sdy + off_dy, mask=msk, other=0.0).to(tl.float32)
    mu = tl.load(mean + base + r, mask=rm, other=0.0)
    rs = tl.load(rstd + base + r, mask=rm, other=0.0)
    xhat = tl.where(msk, (xv - mu[:, None]) * rs[:, None], 0.0)
    if GATE:
        # y = n * swish(z) with n the affine norm: dn = dy * swish(z), dz = dy * n * swish'(z)
        z = tl.load(gate + base * sg + off_g, mask=msk, other=0.0).to(tl.float32)
        sz = tl.sigmoid(z)
        n = xhat
        if HAS_W:
            n = n * wv[None, :]
        if HAS_B:
            n = n + tl.load(b + cols, mask=cm, other=0.0).to(tl.float32)[None, :]
        dz = g * n * sz * (1.0 + z * (1.0 - sz))
        tl.store(dgate + base * sdg + (r[:, None] * sdg + cols[None, :]), dz.to(dgate.dtype.element_ty), mask=msk)
        g = g * z * sz
    if HAS_W:
        wg = g * wv[None, :]
    else:
        wg = g
    c1 = tl.sum(xhat * wg, axis=1) / C
    if RMS:
        dxv = (wg - xhat * c1[:, None]) * rs[:, None]
    else:
        c2 = tl.sum(wg, axis=1) / C
        dxv = (wg - xhat * c1[:, None] - c2[:, None]) * rs[:, None]
    if HAS_DS:
        dxv += tl.load(ds + base * sds + off_ds, mask=msk, other=0.0).to(tl.float32)
    tl.store(dx + base * sdx + off_dx, dxv.to(dx.dtype.element_ty), mask=msk)
    if DX2:
        tl.store(dx2 + base * sdx2 + off_dx2, dxv.to(dx2.dtype.element_ty), mask=msk)
    return g * xhat, g


@jit
def _ln_bwd_kernel(x, w, b, gate, dy, dx, dgate, ds, dx2, mean, rstd, dw_part, db_part, M, C, sx, sg, sdy, sdx,
                   sdg, sds, sdx2, rows_per_prog, RMS: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                   GATE: tl.constexpr, HAS_DS: tl.constexpr, DX2: tl.constexpr, SAME_STRIDES: tl.constexpr,
                   ONE_TILE: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr, STAGES: tl.constexpr):
    pid = tl.program_id(0)
    start = pid * rows_per_prog
    end = tl.minimum(start + rows_per_prog, M)
    cols = tl.arange(0, BC)
    cm = cols < C
    wv = tl.load(w + cols, mask=cm, other=0.0).to(tl.float32) if HAS_W else cols
    if ONE_TILE:  # one row tile per program: no loop, the partial sums straight from the tile
        dw_acc, db_acc = _ln_bwd_tile(x, b, gate, dy, dx, dgate, ds, dx2, mean, rstd, wv, start, end, C, sx, sg,
                                      sdy, sdx, sdg, sds, sdx2, RMS, HAS_W, HAS_B, GATE, HAS_DS, DX2, SAME_STRIDES,
                                      BM, BC)
    else:
        # persistent: weight / bias gradients summed as [BM, BC] tiles (elementwise), over rows once at the end
        dw_acc = tl.zeros([BM, BC], dtype=tl.float32)
        db_acc = tl.zeros([BM, BC], dtype=tl.float32)
        for r0 in tl.range(start, end, BM, num_stages=STAGES):  # STAGES > 1: the next rows load meanwhile
            gx, g = _ln_bwd_tile(x, b, gate, dy, dx, dgate, ds, dx2, mean, rstd, wv, r0, end, C, sx, sg, sdy, sdx,
                                 sdg, sds, sdx2, RMS, HAS_W, HAS_B, GATE, HAS_DS, DX2, SAME_STRIDES, BM, BC)
            dw_acc += gx
            db_acc += g
    if HAS_W:
        tl.store(dw_part + pid * C + cols, tl.sum(dw_acc, axis=0), mask=cm)
    if HAS_B:
        tl.store(db_part + pid * C + cols, tl.sum(db_acc, axis=0), mask=cm)


def launch_config(kind):
    """``LAUNCH_DEFAULTS[kind]`` under the options' ``launch[kind]`` (kind: 'norm_fwd' or 'norm_bwd')."""
    return current_options().settings(kind, LAUNCH_DEFAULTS[kind])


def _blocks(C, cfg, backward=False):
    BC = max(16, next_power_of_2(C))
    tile = cfg['tile'] or (SMALL_C_TILE if 256 < C <= 512 else 2048)
    BM = max(1, min(64, tile // BC))
    if backward:  # 8 elements of each [BM, BC] tile a thread (offline sm_90: 40-55 registers at C = 384 / 768)
        default_warps = max(4, min(16, BM * BC // 256))
    else:
        default_warps = 8 if BC * BM >= 2048 else 4
    return BM, BC, cfg['num_warps'] or default_warps


def norm_fwd(x, weight, bias, eps, rms, out_dtype, gate=None, residual=None):
    """(y in ``out_dtype``, mean [M], rstd [M]) of x [..., C] (times ``swish(gate)``, gate of x's shape); with a
    ``residual`` of x's shape: of ``s = x + residual`` (in their promoted dtype), and s [..., C] as a fourth."""
    C = x.shape[-1]
    x2 = rows_of(x, C)
    g2 = rows_of(gate, C) if gate is not None else x2
    r2 = rows_of(residual, C) if residual is not None else x2
    M = x2.shape[0]
    y = torch.empty((M, C), dtype=out_dtype, device=x.device)
    s = torch.empty((M, C), dtype=torch.promote_types(x.dtype, residual.dtype), device=x.device) \
        if residual is not None else y
    mean = torch.empty(M, dtype=torch.float32, device=x.device)
    rstd = torch.empty(M, dtype=torch.float32, device=x.device)
    if M:
        BM, BC, num_warps = _blocks(C, launch_config('norm_fwd'))
        _ln_fwd_kernel[(cdiv(M, BM),)](
            x2, weight if weight is not None else x2, bias if bias is not None else x2, g2, y, mean, rstd, r2, s,
            M, C, x2.stride(0), g2.stride(0), y.stride(0), r2.stride(0), s.stride(0), eps, RMS=rms,
            HAS_W=weight is not None, HAS_B=bias is not None, GATE=gate is not None, RES=residual is not None,
            BM=BM, BC=BC, num_warps=num_warps)
    out = (y.view(x.shape), mean, rstd)
    return out + (s.view(x.shape),) if residual is not None else out


def norm_bwd(dy, x, weight, bias, mean, rstd, rms, gate=None, ds=None, dx2_dtype=None):
    """(dx in x's dtype, dweight or None, dbias or None, dgate in gate's dtype or None). The pre-norm residual's
    backward (x = the sum s): ``ds``, the gradient reaching s directly, is added to dx, and ``dx2_dtype`` appends
    the same gradient in that dtype (the residual's other input)."""
    C = x.shape[-1]
    x2, dy2 = rows_of(x, C), rows_of(dy, C)
    g2 = rows_of(gate, C) if gate is not None else x2
    ds2 = rows_of(ds, C) if ds is not None else x2
    M = x2.shape[0]
    dx = torch.empty((M, C), dtype=x.dtype, device=x.device)
    dg = torch.empty((M, C), dtype=gate.dtype, device=x.device) if gate is not None else dx
    dx2 = torch.empty((M, C), dtype=dx2_dtype, device=x.device) if dx2_dtype is not None else dx
    has_w, has_b = weight is not None, bias is not None
    cfg = launch_config('norm_bwd')
    BM, BC, num_warps = _blocks(C, cfg, backward=True)
    tiles = max(1, cdiv(M, BM))
    if cfg['progs_per_sm'] is None:  # one tile a program, or as many as make MIN_ROWS_BWD rows (C > 1024)
        progs = cdiv(tiles, cdiv(MIN_ROWS_BWD, BM))
    else:
        progs = max(1, min(tiles, cfg['progs_per_sm'] * num_sms(x.device)))
    rows_per_prog = cdiv(tiles, progs) * BM
    progs = max(1, cdiv(M, rows_per_prog))
    part = torch.empty((2 if has_w and has_b else 1, progs, C), dtype=torch.float32, device=x.device)
    dw_part, db_part = part[0], part[-1]
    if M:
        used = [x2, dy2, dx] + ([g2, dg] if gate is not None else []) + ([ds2] if ds is not None else []) + \
            ([dx2] if dx2_dtype is not None else [])
        _ln_bwd_kernel[(progs,)](
            x2, weight if has_w else x2, bias if has_b else x2, g2, dy2, dx, dg, ds2, dx2, mean, rstd, dw_part,
            db_part, M, C, x2.stride(0), g2.stride(0), dy2.stride(0), dx.stride(0), dg.stride(0), ds2.stride(0),
            dx2.stride(0), rows_per_prog, RMS=rms, HAS_W=has_w, HAS_B=has_b, GATE=gate is not None,
            HAS_DS=ds is not None, DX2=dx2_dtype is not None, SAME_STRIDES=len({t.stride(0) for t in used}) == 1,
            ONE_TILE=rows_per_prog == BM, BM=BM, BC=BC, STAGES=cfg['loop_stages'], num_warps=num_warps)
    else:
        part.zero_()
    sums = part.sum(1)  # one reduction for both partial-row sets
    dw = sums[0].to(weight.dtype) if has_w else None
    db = sums[-1].to(bias.dtype) if has_b else None
    out = (dx.view(x.shape), dw, db, (dg.view(gate.shape) if gate is not None else None))
    return out + (dx2.view(x.shape),) if dx2_dtype is not None else out
