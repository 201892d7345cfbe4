"""Triton kernels of the short convolution (depthwise, causal in the pass's direction, W taps), forward and
backward, bias and SiLU fused.

x is ``[B, N, C]`` (any batch and token strides, unit channel stride), the weight ``[C, W]``. Forward: one program
per ``[BT, BC]`` tile of tokens and channels sums its W shifted tiles in fp32 (the shifted reads of one tile
overlap, so they come from cache: x is read from memory about once), adds the bias, applies SiLU and writes the
output in x's dtype. Nothing is kept for the backward but the inputs.

Backward: x_t is read by the output tokens u = t + d (d = W-1-j, tap j; ``reverse``: u = t - d); each program
walks a range of token tiles of one channel block, recomputes the pre-activation of the W tokens that read its
tile (W x W cached tile reads) for SiLU's derivative, and accumulates ``dx_t = sum_j w_j g_u`` per tile and the
weight and bias gradients ``dw_j = sum_t g_u x_t``, ``db = sum_t g_t`` in registers over its range, written as
one fp32 partial row per program and summed by the host (no atomics: repeatable bits). Packed sequences
(``cu_seqlens``) read each token's position in its sequence (``pos``, int64) to stop taps at the boundaries.
"""
from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..common.launch import jit
from ..common.options import alloc, cdiv, current_options, declare_launch, next_power_of_2, num_sms

MAX_W = 16
# launch settings (kernel_options(launch={'short_conv_fwd' | 'short_conv_bwd': {...}}) overrides them): token
# rows and channels of a tile, warps, and for the backward the programs per SM its token-range split aims at
# (32 x 64 tiles: 32 x 128 ones spill; timings in docs/ops.md) and shared_taps (read the 2W - 1 tiles around a
# program's own once for every neighbour's pre-activation, instead of W tiles per neighbour)
LAUNCH_DEFAULTS = MappingProxyType(dict(
    short_conv_fwd=MappingProxyType(dict(block_t=32, block_c=128, num_warps=4)),
    short_conv_bwd=MappingProxyType(dict(block_t=32, block_c=64, num_warps=4, progs_per_sm=16, shared_taps=False))))
declare_launch(LAUNCH_DEFAULTS['short_conv_fwd'], 'short_conv_fwd')
declare_launch(LAUNCH_DEFAULTS['short_conv_bwd'], 'short_conv_bwd')


@triton.jit
def _pos(pos, t, m, N, REVERSE: tl.constexpr, VARLEN: tl.constexpr):
    """Distance of token t to its sequence's start in the pass's direction."""
    if VARLEN:
        p = tl.load(pos + t, mask=m, other=0).to(tl.int32)
    elif REVERSE:
        p = N - 1 - t
    else:
        p = t
    return p


@triton.jit
def _pre(x, w, b, t, p, ok, c, mc, sxn, W: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, HAS_B: tl.constexpr,
         REVERSE: tl.constexpr):
    """The pre-activation of tokens t (``p``: their positions, ``ok``: rows to compute) in fp32."""
    acc = tl.zeros([BT, BC], dtype=tl.float32)
    for i in tl.static_range(W):
        d = W - 1 - i  # tap i reads the token d steps back in the pass
        s = t + d if REVERSE else t - d
        m = (ok & (p >= d))[:, None] & mc[None, :]
        xv = tl.load(x + s.to(tl.int64)[:, None] * sxn + c[None, :], mask=m, other=0.).to(tl.float32)
        acc += xv * tl.load(w + c * W + i, mask=mc, other=0.).to(tl.float32)[None, :]
    if HAS_B:
        acc += tl.load(b + c, mask=mc, other=0.).to(tl.float32)[None, :]
    return acc


@jit
def _conv_fwd_kernel(x, w, b, pos, y, N, C, sxb, sxn, W: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                     HAS_B: tl.constexpr, SILU: tl.constexpr, REVERSE: tl.constexpr, VARLEN: tl.constexpr):
    i_t, i_c, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = i_t * BT + tl.arange(0, BT)
    c = i_c * BC + tl.arange(0, BC)
    mt, mc = t < N, c < C
    p = _pos(pos, t, mt, N, REVERSE, VARLEN)
    acc = _pre(x + i_b.to(tl.int64) * sxb, w, b, t, p, mt, c, mc, sxn, W, BT, BC, HAS_B, REVERSE)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    rows = i_b.to(tl.int64) * N + t
    tl.store(y + rows[:, None] * C + c[None, :], acc.to(y.dtype.element_ty), mask=mt[:, None] & mc[None, :])


@jit
def _conv_bwd_kernel(x, w, b, pos, dy, dx, dw, db, N, C, sxb, sxn, sdb, sdn, tiles_per_prog, W: tl.constexpr,
                     WP: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, HAS_B: tl.constexpr, SILU: tl.constexpr,
                     REVERSE: tl.constexpr, VARLEN: tl.constexpr, SHARED: tl.constexpr):
    i_c, i_s, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c = i_c * BC + tl.arange(0, BC)
    mc = c < C
    xb = x + i_b.to(tl.int64) * sxb
    dyb = dy + i_b.to(tl.int64) * sdb
    dw_acc = tl.zeros([WP, BC], dtype=tl.float32)
    db_acc = tl.zeros([BC], dtype=tl.float32)
    taps = tl.arange(0, WP)
    for it in range(tiles_per_prog):
        t = (i_s * tiles_per_prog + it) * BT + tl.arange(0, BT)
        mt = t < N
        p = _pos(pos, t, mt, N, REVERSE, VARLEN)
        if SILU and SHARED:  # the 2W - 1 tiles around t, o = s - (W - 1) steps later in the pass, read once
            xs = ()
            for s in tl.static_range(2 * W - 1):
                r = t - (s - (W - 1)) if REVERSE else t + (s - (W - 1))
                xs = xs + (tl.load(xb + r.to(tl.int64)[:, None] * sxn + c[None, :],
                                   mask=(mt & (r >= 0) & (r < N))[:, None] & mc[None, :], other=0.).to(tl.float32),)
            xt = xs[W - 1]
        else:
            xt = tl.load(xb + t.to(tl.int64)[:, None] * sxn + c[None, :], mask=mt[:, None] & mc[None, :],
                         other=0.).to(tl.float32)
        dxt = tl.zeros([BT, BC], dtype=tl.float32)
        for j in tl.static_range(W):
            d = W - 1 - j  # x_t is tap j of token u, d steps later in the pass
            u = t - d if REVERSE else t + d
            ok = mt & (u >= 0) & (u < N)
            pu = _pos(pos, u, ok, N, REVERSE, VARLEN)
            ok = ok & (pu >= d)  # u in t's sequence
            g = tl.load(dyb + u.to(tl.int64)[:, None] * sdn + c[None, :], mask=ok[:, None] & mc[None, :],
                        other=0.).to(tl.float32)
            if SILU:
                if SHARED:  # tap i of u is the tile d + i of xs (the index spelt in constexprs: d is a variable)
                    a = tl.zeros([BT, BC], dtype=tl.float32)
                    for i in tl.static_range(W):
                        wi = tl.load(w + c * W + i, mask=mc, other=0.).to(tl.float32)
                        a += tl.where((ok & (pu >= W - 1 - i))[:, None], xs[W - 1 - j + i], 0.) * wi[None, :]
                    if HAS_B:
                        a += tl.load(b + c, mask=mc, other=0.).to(tl.float32)[None, :]
                else:
                    a = _pre(xb, w, b, u, pu, ok, c, mc, sxn, W, BT, BC, HAS_B, REVERSE)
                sg = tl.sigmoid(a)
                g = g * sg * (1. + a * (1. - sg))
            dxt += g * tl.load(w + c * W + j, mask=mc, other=0.).to(tl.float32)[None, :]
            dw_acc += tl.where(taps[:, None] == j, tl.sum(g * xt, axis=0)[None, :], 0.)
            if j == W - 1:
                db_acc += tl.sum(g, axis=0)
        rows = i_b.to(tl.int64) * N + t
        tl.store(dx + rows[:, None] * C + c[None, :], dxt.to(dx.dtype.element_ty), mask=mt[:, None] & mc[None, :])
    prog = (i_b * tl.num_programs(1) + i_s).to(tl.int64)
    tl.store(dw + prog * C * W + c[None, :] * W + taps[:, None], dw_acc,
             mask=(taps < W)[:, None] & mc[None, :])
    if HAS_B:
        tl.store(db + prog * C + c, db_acc, mask=mc)


def launch_config(kind):
    """``LAUNCH_DEFAULTS[kind]`` under the options' ``launch[kind]``."""
    return current_options().settings(kind, LAUNCH_DEFAULTS[kind])


def _blocks(C, cfg):
    BC = min(cfg['block_c'], max(16, next_power_of_2(C)))
    return cfg['block_t'], BC


def _unit_channels(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def short_conv_fwd(x, weight, bias, pos, activation, reverse):
    """y [B, N, C] in x's dtype (``pos``: the packed tokens' positions, None for a dense batch)."""
    x = _unit_channels(x)
    B, N, C = x.shape
    W = weight.shape[-1]
    cfg = launch_config('short_conv_fwd')
    BT, BC = _blocks(C, cfg)
    y = alloc((B, N, C), x.dtype, x.device)
    weight = weight.contiguous()
    _conv_fwd_kernel[(cdiv(N, BT), cdiv(C, BC), B)](
        x, weight, bias if bias is not None else weight, pos if pos is not None else weight, y, N, C,
        x.stride(0), x.stride(1), W=W, BT=BT, BC=BC, HAS_B=bias is not None, SILU=activation == 'silu',
        REVERSE=reverse, VARLEN=pos is not None, num_warps=cfg['num_warps'])
    return y


def short_conv_bwd(dy, x, weight, bias, pos, activation, reverse):
    """(dx in x's dtype, dweight in weight's, dbias in bias's or None)."""
    x, dy = _unit_channels(x), _unit_channels(dy)
    B, N, C = x.shape
    W = weight.shape[-1]
    cfg = launch_config('short_conv_bwd')
    BT, BC = _blocks(C, cfg)
    tiles = cdiv(N, BT)
    # split each sequence's tiles over programs so that the grid fills progs_per_sm programs a multiprocessor
    splits = max(1, min(tiles, cdiv(cfg['progs_per_sm'] * num_sms(x.device), B * cdiv(C, BC))))
    per_prog = cdiv(tiles, splits)
    splits = cdiv(tiles, per_prog)
    weight = weight.contiguous()
    dx = alloc((B, N, C), x.dtype, x.device)
    dw = torch.empty((B * splits, C, W), dtype=torch.float32, device=x.device)
    db = torch.empty((B * splits, C), dtype=torch.float32, device=x.device) if bias is not None else dw
    _conv_bwd_kernel[(cdiv(C, BC), splits, B)](
        x, weight, bias if bias is not None else weight, pos if pos is not None else weight, dy, dx, dw, db, N, C,
        x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), per_prog, W=W, WP=next_power_of_2(W), BT=BT, BC=BC,
        HAS_B=bias is not None, SILU=activation == 'silu', REVERSE=reverse, VARLEN=pos is not None,
        SHARED=bool(cfg['shared_taps']), num_warps=cfg['num_warps'])
    return dx, dw.sum(0).to(weight.dtype), (db.sum(0).to(bias.dtype) if bias is not None else None)
