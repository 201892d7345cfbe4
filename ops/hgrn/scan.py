"""Chunked parallel scan for HGRN's elementwise recurrence (Triton, forward and backward).

Each program owns ``BD`` channels of one sequence and walks its chunks of ``T`` tokens in order; inside a
chunk the recurrence is one ``tl.associative_scan`` over (cumulative log gate, value) pairs,

    (a1, b1) o (a2, b2) = (a1 + a2, exp(a2) * b1 + b2),

so decays only ever appear as exp of sums of log gates (<= 0): log gates of -20 or ~0 are both safe, and
``1 - exp(g)`` is computed as ``-expm1(g)`` (series near 0). ``reverse=True`` maps logical time t to row
``eos - 1 - t``; the backward runs the same scan over reversed logical time with the gates shifted by one:
``dh_t = do_t + exp(g_{t+1}) dh_{t+1}``, ``dx_t = (1 - exp(g_t)) dh_t``,
``dg_t = exp(g_t) (h_{t-1} - x_t) dh_t`` (gated input; without it ``dg_t = exp(g_t) h_{t-1} dh_t``).

Few sequences x channel blocks leave most of the GPU idle while each program walks the whole sequence, so the
sequence is also split into segments of ``SEG`` tokens: a first pass (``SUMMARY``) reduces each segment but the
last to its total log gate and its local final state (the scan from a zero state), and the main pass starts each
segment from the state composed of the preceding segments' summaries. The backward splits reversed time the same
way. Segments cost one more read of the pass's two scanned inputs.
"""
from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..common.jit import phys_row, seq_bounds
from ..common.launch import jit
from ..common.options import alloc, cdiv, current_options, declare_launch, dummy, next_power_of_2, num_sms
from ..common.varlen import PackedSeqs

# launch settings (``kernel_options(launch={'hgrn': {...}})``): channels a program (None: _block's choice), the
# programs an SM the segments aim at, the shortest segment, or a fixed segment length in tokens
LAUNCH_DEFAULTS = MappingProxyType(dict(block_d=None, progs_per_sm=2, min_segment=512, segment=None))
declare_launch(LAUNCH_DEFAULTS, 'hgrn')


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 + a2, b1 * tl.exp(a2) + b2


@triton.jit
def _neg_expm1(g):
    """1 - exp(g), accurate near g = 0 (series) and elsewhere."""
    s = g * (1. + g / 2. * (1. + g / 3. * (1. + g / 4. * (1. + g / 5. * (1. + g / 6.)))))
    return -tl.where(tl.abs(g) < 0.1, s, tl.exp(g) - 1.)


@triton.jit
def _entry_state(init, USE_INIT: tl.constexpr, SUMMARY: tl.constexpr, sa, sb, i_n, i_s, NSEG, c, mc, D,
                 BD: tl.constexpr):
    """(state entering segment i_s, the summaries' row offsets of sequence i_n): zero for a summary, else ``init``
    ([S, D]: h0 or dht; zero without) carried through the earlier segments' (log gate sum, local state)."""
    srow = (i_n.to(tl.int64) * NSEG) * D + c
    h = tl.zeros([BD], dtype=tl.float32)
    if not SUMMARY:
        if USE_INIT:
            h += tl.load(init + i_n.to(tl.int64) * D + c, mask=mc, other=0.).to(tl.float32)
        for j in range(i_s):
            a = tl.load(sa + srow + j * D, mask=mc, other=0.)
            h = tl.load(sb + srow + j * D, mask=mc, other=0.) + tl.exp(a) * h
    return h, srow


@jit
def _hgrn_fwd_kernel(x, g, h0, o, ht, sa, sb, cu, N, D, SEG, NSEG, T: tl.constexpr, BD: tl.constexpr,
                     GATED: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr, REVERSE: tl.constexpr,
                     VARLEN: tl.constexpr, SUMMARY: tl.constexpr):
    """Segment program_id(2) of sequence program_id(1), channels program_id(0). SUMMARY: its total log gate and
    local final state into sa / sb [S, NSEG, D]; else o from the state the earlier segments' summaries make."""
    i_d, i_n, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos = seq_bounds(i_n, cu, N, VARLEN)
    L = eos - bos
    t0 = i_s * SEG
    if t0 < L:
        t1 = tl.minimum(L, t0 + SEG)
        c = i_d * BD + tl.arange(0, BD)
        mc = c < D
        ar = tl.arange(0, T)
        h, srow = _entry_state(h0, USE_H0, SUMMARY, sa, sb, i_n, i_s, NSEG, c, mc, D, BD)
        A = tl.zeros([BD], dtype=tl.float32)
        for it in range(tl.cdiv(t1 - t0, T)):
            t = t0 + it * T + ar
            m = (t < t1)[:, None] & mc[None, :]
            r = phys_row(t, bos, eos, REVERSE)
            p = r.to(tl.int64)[:, None] * D + c[None, :]
            xt = tl.load(x + p, mask=m, other=0.).to(tl.float32)
            gt = tl.load(g + p, mask=m, other=0.).to(tl.float32)
            if GATED:
                xt = xt * _neg_expm1(gt)
            a, b = tl.associative_scan((gt, xt), 0, _combine)
            hc = b + tl.exp(a) * h[None, :]
            if SUMMARY:
                A += tl.sum(gt, axis=0)
            else:
                tl.store(o + p, hc.to(o.dtype.element_ty), mask=m)
            h = tl.sum(tl.where(ar[:, None] == T - 1, hc, 0.), axis=0)
        if SUMMARY:
            tl.store(sa + srow + i_s * D, A, mask=mc)
            tl.store(sb + srow + i_s * D, h, mask=mc)
        elif STORE_HT:
            if t1 == L:
                tl.store(ht + i_n.to(tl.int64) * D + c, h, mask=mc)


@jit
def _hgrn_bwd_kernel(x, g, o, h0, do, dht, dx, dg, dh0, sa, sb, cu, N, D, SEG, NSEG, T: tl.constexpr,
                     BD: tl.constexpr, GATED: tl.constexpr, USE_H0: tl.constexpr, USE_DHT: tl.constexpr,
                     REVERSE: tl.constexpr, VARLEN: tl.constexpr, SUMMARY: tl.constexpr):
    """Segment program_id(2) of reversed time (logical t = L - 1 - s) as the forward's: SUMMARY reduces the
    scan of (g_{t+1}, do_t) over it; the main pass writes dx, dg (and dh0 from the segment that holds t = 0)."""
    i_d, i_n, i_s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bos, eos = seq_bounds(i_n, cu, N, VARLEN)
    L = eos - bos
    s0 = i_s * SEG
    if s0 < L:
        s1 = tl.minimum(L, s0 + SEG)
        c = i_d * BD + tl.arange(0, BD)
        mc = c < D
        ar = tl.arange(0, T)
        dh, srow = _entry_state(dht, USE_DHT, SUMMARY, sa, sb, i_n, i_s, NSEG, c, mc, D, BD)
        A = tl.zeros([BD], dtype=tl.float32)
        if not SUMMARY:
            if USE_H0:
                hinit = tl.load(h0 + i_n.to(tl.int64) * D + c, mask=mc, other=0.).to(tl.float32)
            else:
                hinit = tl.zeros([BD], dtype=tl.float32)
        g0 = tl.zeros([BD], dtype=tl.float32)
        for it in range(tl.cdiv(s1 - s0, T)):
            s = s0 + it * T + ar        # reversed logical time: t = L - 1 - s
            t = L - 1 - s
            ms = s < s1
            m = ms[:, None] & mc[None, :]
            mn = (ms & (t + 1 < L))[:, None] & mc[None, :]
            if REVERSE:
                r = eos - 1 - t
                rn = r - 1
            else:
                r = bos + t
                rn = r + 1
            p = r.to(tl.int64)[:, None] * D + c[None, :]
            pn = rn.to(tl.int64)[:, None] * D + c[None, :]
            do_t = tl.load(do + p, mask=m, other=0.).to(tl.float32)
            gn = tl.load(g + pn, mask=mn, other=0.).to(tl.float32)      # gate of step t + 1
            a, b = tl.associative_scan((gn, do_t), 0, _combine)
            dhc = b + tl.exp(a) * dh[None, :]
            dh = tl.sum(tl.where(ar[:, None] == T - 1, dhc, 0.), axis=0)
            if SUMMARY:
                A += tl.sum(gn, axis=0)
            else:
                mp = (ms & (t >= 1))[:, None] & mc[None, :]
                if REVERSE:
                    rp = r + 1
                else:
                    rp = r - 1
                pp = rp.to(tl.int64)[:, None] * D + c[None, :]
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
            # rows past the segment end carry (0, 0): the scan's last row holds the running gradient
        if SUMMARY:
            tl.store(sa + srow + i_s * D, A, mask=mc)
            tl.store(sb + srow + i_s * D, dh, mask=mc)
        elif USE_H0:
            if s1 == L:
                tl.store(dh0 + i_n.to(tl.int64) * D + c, dh * tl.exp(g0), mask=mc)


def launch_config():
    """``LAUNCH_DEFAULTS`` under the options' ``launch['hgrn']``."""
    return current_options().settings('hgrn', LAUNCH_DEFAULTS)


def _widest(D):
    """The widest channel block: 64 channels (128-byte bf16 rows), fewer for narrower D, at least 16."""
    return min(64, max(16, next_power_of_2(D)))


def _block(D, nseq, cfg):
    """Channels a program: ``block_d``, else narrowed from 64 (down to 16) until sequences x channel blocks reach
    256 programs."""
    BD = cfg['block_d']
    if BD:
        if BD < 1 or BD & (BD - 1):
            raise ValueError(f"launch['hgrn']['block_d'] must be a power of two, got {BD!r}")
        return BD
    BD = _widest(D)
    while BD > 16 and nseq * cdiv(D, BD) < 256:
        BD //= 2
    return BD


def _segments(N, D, BD, seqs, chunk, cfg, device):
    """Segment length (a multiple of the chunk) with BD channels a program."""
    if cfg['segment']:
        return cdiv(cfg['segment'], chunk) * chunk
    want = cdiv(cfg['progs_per_sm'] * num_sms(device), seqs.nseq * cdiv(D, BD))
    nseg = max(1, min(want, N // max(chunk, cfg['min_segment'])))
    return cdiv(cdiv(N, nseg), chunk) * chunk


def _plan(N, D, seqs, chunk, device):
    """(BD, SEG, NSEG, (sa, sb)): channels a program, the segment length (a multiple of the chunk; N when
    unsplit), the segments of the longest possible sequence (N tokens) and the summaries' fp32 [S, NSEG, D]
    buffers (stand-ins when unsplit). Where the narrowed block still splits the sequence, the widest block
    splits it further instead: the summary pass is paid either way and 128-byte rows beat 32-byte ones (H100,
    B2 H12 N16384 fwd+bwd 0.83 against 1.24 ms; unsplit B8 N4096 keeps 16 channels: 0.53 against 0.92 ms)."""
    cfg = launch_config()
    BD = _block(D, seqs.nseq, cfg)
    seg = _segments(N, D, BD, seqs, chunk, cfg, device)
    if not cfg['block_d'] and BD < _widest(D) and cdiv(N, seg) > 1:
        BD = _widest(D)
        seg = _segments(N, D, BD, seqs, chunk, cfg, device)
    nseg = cdiv(N, seg)
    if nseg == 1:
        return BD, N, 1, (dummy(device, torch.float32),) * 2
    return BD, seg, nseg, torch.empty((2, seqs.nseq, nseg, D), dtype=torch.float32, device=device).unbind(0)


def hgrn_fwd(x, g, h0, output_final_state, cu_seqlens, reverse, gated_input, chunk):
    """o [B, N, D] in x's dtype and the fp32 final state [S, D] (None unless ``output_final_state``)."""
    x, g = x.contiguous(), g.contiguous()
    h0 = h0.contiguous() if h0 is not None else None
    B, N, D = x.shape
    seqs = PackedSeqs(B, N, cu_seqlens, x.device)
    o = alloc(x.shape, x.dtype, x.device)
    ht = alloc((seqs.nseq, D), torch.float32, x.device) if output_final_state else o
    BD, SEG, NSEG, summ = _plan(N, D, seqs, chunk, x.device)
    args = (x, g, h0 if h0 is not None else x, o, ht, *summ, seqs.cu, N, D, SEG, NSEG)
    flags = dict(T=chunk, BD=BD, GATED=gated_input, USE_H0=h0 is not None, STORE_HT=output_final_state,
                 REVERSE=reverse, VARLEN=seqs.varlen)
    if NSEG > 1:
        _hgrn_fwd_kernel[(cdiv(D, BD), seqs.nseq, NSEG - 1)](*args, **flags, SUMMARY=True)
    _hgrn_fwd_kernel[(cdiv(D, BD), seqs.nseq, NSEG)](*args, **flags, SUMMARY=False)
    return o, (ht if output_final_state else None)


def hgrn_bwd(x, g, h0, o, do, dht, cu_seqlens, reverse, gated_input, chunk):
    """(dx, dg, dh0) from the forward's output ``o`` (the states); dh0 None without ``h0``."""
    x, g, o, do = x.contiguous(), g.contiguous(), o.contiguous(), do.contiguous()
    h0 = h0.contiguous() if h0 is not None else None
    B, N, D = x.shape
    seqs = PackedSeqs(B, N, cu_seqlens, x.device)
    BD, SEG, NSEG, summ = _plan(N, D, seqs, chunk, x.device)
    dx = alloc(x.shape, x.dtype, x.device)
    dg = alloc(g.shape, g.dtype, g.device)
    dh0 = alloc((seqs.nseq, D), torch.float32, x.device) if h0 is not None else None
    args = (x, g, o, h0 if h0 is not None else x, do, dht.contiguous() if dht is not None else x, dx, dg,
            dh0 if dh0 is not None else dx, *summ, seqs.cu, N, D, SEG, NSEG)
    flags = dict(T=chunk, BD=BD, GATED=gated_input, USE_H0=h0 is not None, USE_DHT=dht is not None,
                 REVERSE=reverse, VARLEN=seqs.varlen)
    if NSEG > 1:
        _hgrn_bwd_kernel[(cdiv(D, BD), seqs.nseq, NSEG - 1)](*args, **flags, SUMMARY=True)
    _hgrn_bwd_kernel[(cdiv(D, BD), seqs.nseq, NSEG)](*args, **flags, SUMMARY=False)
    return dx, dg, (dh0.to(h0.dtype) if dh0 is not None else None)
