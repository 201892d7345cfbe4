"""Chunked parallel scan for HGRN's elementwise recurrence (Triton, forward and backward).

Each program owns ``BD`` channels of one sequence and walks its chunks of ``T`` tokens in order; inside a
chunk the recurrence is one ``tl.associative_scan`` over (cumulative log gate, value) pairs,

    (a1, b1) o (a2, b2) = (a1 + a2, exp(a2) * b1 + b2),

so decays only ever appear as exp of sums of log gates (<= 0): log gates of -20 or ~0 are both safe, and
``1 - exp(g)`` is computed as ``-expm1(g)`` (series near 0). ``reverse=True`` maps logical time t to row
``eos - 1 - t``; the backward runs the same scan over reversed logical time with the gates shifted by one:
``dh_t = do_t + exp(g_{t+1}) dh_{t+1}``, ``dx_t = (1 - exp(g_t)) dh_t``,
``dg_t = exp(g_t) (h_{t-1} - x_t) dh_t`` (gated input; without it ``dg_t = exp(g_t) h_{t-1} dh_t``).
"""
import torch
import triton
import triton.language as tl

from ..common.jit import phys_row, seq_bounds
from ..common.launch import jit
from ..common.options import alloc, cdiv, next_power_of_2
from ..common.varlen import PackedSeqs


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 + a2, b1 * tl.exp(a2) + b2


@triton.jit
def _neg_expm1(g):
    """1 - exp(g), accurate near g = 0 (series) and elsewhere."""
    s = g * (1. + g / 2. * (1. + g / 3. * (1. + g / 4. * (1. + g / 5. * (1. + g / 6.)))))
    return -tl.where(tl.abs(g) < 0.1, s, tl.exp(g) - 1.)


@jit
def _hgrn_fwd_kernel(x, g, h0, o, ht, cu, N, D, T: tl.constexpr, BD: tl.constexpr, GATED: tl.constexpr,
                     USE_H0: tl.constexpr, STORE_HT: tl.constexpr, REVERSE: tl.constexpr, VARLEN: tl.constexpr):
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos = seq_bounds(i_n, cu, N, VARLEN)
    L = eos - bos
    c = i_d * BD + tl.arange(0, BD)
    mc = c < D
    ar = tl.arange(0, T)
    h = tl.zeros([BD], dtype=tl.float32)
    if USE_H0:
        h += tl.load(h0 + i_n.to(tl.int64) * D + c, mask=mc, other=0.).to(tl.float32)
    for it in range(tl.cdiv(L, T)):
        t = it * T + ar
        m = (t < L)[:, None] & mc[None, :]
        r = phys_row(t, bos, eos, REVERSE)
        p = r.to(tl.int64)[:, None] * D + c[None, :]
        xt = tl.load(x + p, mask=m, other=0.).to(tl.float32)
        gt = tl.load(g + p, mask=m, other=0.).to(tl.float32)
        if GATED:
            xt = xt * _neg_expm1(gt)
        a, b = tl.associative_scan((gt, xt), 0, _combine)
        hc = b + tl.exp(a) * h[None, :]
        tl.store(o + p, hc.to(o.dtype.element_ty), mask=m)
        h = tl.sum(tl.where(ar[:, None] == T - 1, hc, 0.), axis=0)
    if STORE_HT:
        tl.store(ht + i_n.to(tl.int64) * D + c, h, mask=mc)


@jit
def _hgrn_bwd_kernel(x, g, o, h0, do, dht, dx, dg, dh0, cu, N, D, T: tl.constexpr, BD: tl.constexpr,
                     GATED: tl.constexpr, USE_H0: tl.constexpr, USE_DHT: tl.constexpr, REVERSE: tl.constexpr,
                     VARLEN: tl.constexpr):
    i_d, i_n = tl.program_id(0), tl.program_id(1)
    bos, eos = seq_bounds(i_n, cu, N, VARLEN)
    L = eos - bos
    c = i_d * BD + tl.arange(0, BD)
    mc = c < D
    ar = tl.arange(0, T)
    dh = tl.zeros([BD], dtype=tl.float32)
    if USE_DHT:
        dh += tl.load(dht + i_n.to(tl.int64) * D + c, mask=mc, other=0.).to(tl.float32)
    if USE_H0:
        hinit = tl.load(h0 + i_n.to(tl.int64) * D + c, mask=mc, other=0.).to(tl.float32)
    else:
        hinit = tl.zeros([BD], dtype=tl.float32)
    g0 = tl.zeros([BD], dtype=tl.float32)
    for it in range(tl.cdiv(L, T)):
        s = it * T + ar            # reversed logical time: t = L - 1 - s
        t = L - 1 - s
        ms = s < L
        m = ms[:, None] & mc[None, :]
        mn = (ms & (t + 1 < L))[:, None] & mc[None, :]
        mp = (ms & (t >= 1))[:, None] & mc[None, :]
        if REVERSE:
            r = eos - 1 - t
            rn = r - 1
            rp = r + 1
        else:
            r = bos + t
            rn = r + 1
            rp = r - 1
        p = r.to(tl.int64)[:, None] * D + c[None, :]
        pn = rn.to(tl.int64)[:, None] * D + c[None, :]
        pp = rp.to(tl.int64)[:, None] * D + c[None, :]
        do_t = tl.load(do + p, mask=m, other=0.).to(tl.float32)
        gn = tl.load(g + pn, mask=mn, other=0.).to(tl.float32)      # gate of step t + 1
        a, b = tl.associative_scan((gn, do_t), 0, _combine)
        dhc = b + tl.exp(a) * dh[None, :]
        dh = tl.sum(tl.where(ar[:, None] == T - 1, dhc, 0.), axis=0)
        gt = tl.load(g + p, mask=m, other=0.).to(tl.float32)
        xt = tl.load(x + p, mask=m, other=0.).to(tl.float32)
        hp = tl.load(o + pp, mask=mp, other=0.).to(tl.float32)
        hp = tl.where((t == 0)[:, None], hinit[None, :], hp)
        eg = tl.exp(gt)
        if GATED:
            dxt = dhc * _neg_expm1(gt)
            dgt = dhc * eg * (hp - xt)
        else:
            dxt = dhc
            dgt = dhc * eg * hp
        tl.store(dx + p, dxt.to(dx.dtype.element_ty), mask=m)
        tl.store(dg + p, dgt.to(dg.dtype.element_ty), mask=m)
        g0 = tl.sum(tl.where((t == 0)[:, None], gt, 0.), axis=0) + g0
        # rows past the sequence end (s >= L) carry (0, 0): the scan's last row holds the running gradient
    if USE_H0:
        tl.store(dh0 + i_n.to(tl.int64) * D + c, dh * tl.exp(g0), mask=mc)


def _block(D, nseq):
    BD = min(64, max(16, next_power_of_2(D)))
    while BD > 16 and nseq * cdiv(D, BD) < 256:
        BD //= 2
    return BD


def hgrn_fwd(x, g, h0, output_final_state, cu_seqlens, reverse, gated_input, chunk):
    """o [B, N, D] in x's dtype and the fp32 final state [S, D] (None unless ``output_final_state``)."""
    x, g = x.contiguous(), g.contiguous()
    h0 = h0.contiguous() if h0 is not None else None
    B, N, D = x.shape
    seqs = PackedSeqs(B, N, cu_seqlens, x.device)
    o = alloc(x.shape, x.dtype, x.device)
    ht = alloc((seqs.nseq, D), torch.float32, x.device) if output_final_state else o
    BD = _block(D, seqs.nseq)
    _hgrn_fwd_kernel[(cdiv(D, BD), seqs.nseq)](
        x, g, h0 if h0 is not None else x, o, ht, seqs.cu, N, D, T=chunk, BD=BD, GATED=gated_input,
        USE_H0=h0 is not None, STORE_HT=output_final_state, REVERSE=reverse, VARLEN=seqs.varlen)
    return o, (ht if output_final_state else None)


def hgrn_bwd(x, g, h0, o, do, dht, cu_seqlens, reverse, gated_input, chunk):
    """(dx, dg, dh0) from the forward's output ``o`` (the states); dh0 None without ``h0``."""
    x, g, o, do = x.contiguous(), g.contiguous(), o.contiguous(), do.contiguous()
    h0 = h0.contiguous() if h0 is not None else None
    B, N, D = x.shape
    seqs = PackedSeqs(B, N, cu_seqlens, x.device)
    BD = _block(D, seqs.nseq)
    dx = alloc(x.shape, x.dtype, x.device)
    dg = alloc(g.shape, g.dtype, g.device)
    dh0 = alloc((seqs.nseq, D), torch.float32, x.device) if h0 is not None else None
    _hgrn_bwd_kernel[(cdiv(D, BD), seqs.nseq)](
        x, g, o, h0 if h0 is not None else x, do, dht.contiguous() if dht is not None else x, dx, dg,
        dh0 if dh0 is not None else dx, seqs.cu, N, D, T=chunk, BD=BD, GATED=gated_input, USE_H0=h0 is not None,
        USE_DHT=dht is not None, REVERSE=reverse, VARLEN=seqs.varlen)
    return dx, dg, (dh0.to(h0.dtype) if dh0 is not None else None)
