"""Gate cumsums and the sequential state kernels of the gated linear attention core (both chunk paths):
chunk-local prefix / suffix sums of the log gates, the reverse cumulative sum of the gate gradients, the state
before every chunk (forward, recomputed in the backward) and the state gradients (right to left)."""
from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..common.jit import chunk_info, phys_row, seq_info
from ..common.launch import jit
from ..common.options import alloc, cdiv, current_options, declare_launch, dummy, num_sms
from .blocks import _chunk_rows, _decay, _grow, _gtile, _hrow, _hstore, _htile, _mm, _qgate, _rows
from .launch import _lowp, _or, _pow2, _prec

# the sequential state kernels' time split (``kernel_options(launch={'gla_state': {...}})``): programs an SM the
# segments aim at, the fewest chunks a segment, or a fixed number of chunks a segment; split_adj: the bonus
# form's backward (its boundary terms) splits too (session 20: CPU-tested, compiled offline for sm_90, untimed)
STATE_LAUNCH = MappingProxyType(dict(progs_per_sm=4, min_segment=8, segment=None, split_adj=False))
declare_launch(STATE_LAUNCH, 'gla_state')


@jit
def _cumsum_kernel(g, out, suf, cu, chunk_seq, chunk_idx, N, NT, H, D,
                   C: tl.constexpr, BD: tl.constexpr, SCALAR: tl.constexpr, REVERSE: tl.constexpr,
                   VARLEN: tl.constexpr):
    """Chunk-local inclusive prefix sums of log gates in logical time order, and exclusive suffix sums
    (sum over the later rows of the chunk: the exponent of the decay to the chunk end, kept accurate)."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    t = i_t * C + tl.arange(0, C)
    m = t < eos - bos
    r = phys_row(t, bos, eos, REVERSE)
    if SCALAR:
        x = tl.load(g + r.to(tl.int64) * H + i_h, mask=m, other=0.).to(tl.float32)
        tl.store(out + r.to(tl.int64) * H + i_h, tl.cumsum(x, axis=0), mask=m)
        tl.store(suf + r.to(tl.int64) * H + i_h, tl.cumsum(x, axis=0, reverse=True) - x, mask=m)
    else:
        c = tl.arange(0, BD)
        x = _htile(g, r, m, c, D, H, i_h)
        _hstore(out, tl.cumsum(x, axis=0), r, m, c, D, H, i_h)
        _hstore(suf, tl.cumsum(x, axis=0, reverse=True) - x, r, m, c, D, H, i_h)


@jit
def _revcumsum_kernel(x, out, carry, cu, chunk_seq, chunk_idx, N, NT, H, D,
                      C: tl.constexpr, BD: tl.constexpr, SCALAR: tl.constexpr, REVERSE: tl.constexpr,
                      VARLEN: tl.constexpr):
    """out_t = sum_{t' >= t} x_t' over the rows of t's chunk (logical time, fp32) plus that chunk's entry of
    ``carry`` ([chunks, H, D] or [chunks, H]: the sum over the sequence's later rows, given in closed form, so that
    no rounding error is carried from chunk to chunk, and every chunk is a program of its own)."""
    i_d, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_h, i_t, hc, bos, eos, L, ac, t, m, r = _chunk_rows(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, C, REVERSE,
                                                         VARLEN)
    if SCALAR:
        xt = tl.load(x + r.to(tl.int64) * H + i_h, mask=m, other=0.).to(tl.float32)
        y = tl.load(carry + (hc * H + i_h).to(tl.int64)) + tl.sum(xt, axis=0) - tl.cumsum(xt, axis=0) + xt
        tl.store(out + r.to(tl.int64) * H + i_h, y, mask=m)
    else:
        c = i_d * BD + tl.arange(0, BD)
        xt = _htile(x, r, m, c, D, H, i_h)
        y = _hrow(carry, hc, c, D, H, i_h)[None, :] + tl.sum(xt, axis=0)[None, :] - tl.cumsum(xt, axis=0) + xt
        _hstore(out, y, r, m, c, D, H, i_h)


@triton.jit
def _seq_tile(i_k, i_v, i_nh, cu, chunk_off, N, NT, H, K, V, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
              VARLEN: tl.constexpr):
    """Program (i_k, i_v, i_nh) of a state kernel: (head, bos, eos, first chunk row, sequence length, chunks, key /
    value columns of its state tile, the tile's mask and its offsets in a [K, V] state)."""
    i_n, i_h, bos, eos, c0 = seq_info(i_nh, cu, chunk_off, N, NT, H, VARLEN)
    L = eos - bos
    nt = tl.cdiv(L, C)
    ck = i_k * BK + tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    return i_h, bos, eos, c0, L, nt, ck, cv, (ck[:, None] < K) & (cv[None, :] < V), ck[:, None] * V + cv[None, :]


@triton.jit
def _segment_tile(cu, chunk_off, N, NT, H, K, V, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  VARLEN: tl.constexpr):
    """Program (i_s * NK + i_k, i_v, i_nh) of a time-split state kernel: (i_v, i_nh, segment i_s, then
    _seq_tile's)."""
    pid, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_h, bos, eos, c0, L, nt, ck, cv, mkv, okv = _seq_tile(pid % tl.cdiv(K, BK), i_v, i_nh, cu, chunk_off, N, NT, H,
                                                           K, V, C, BK, BV, VARLEN)
    return i_v, i_nh, pid // tl.cdiv(K, BK), i_h, bos, eos, c0, L, nt, ck, cv, mkv, okv


@triton.jit
def _state_in(ptr, i_nh, okv, mkv, K, V, BK: tl.constexpr, BV: tl.constexpr, USE: tl.constexpr):
    """fp32 state tile of sequence x head ``i_nh`` of a [S, H, K, V] state (initial state, dht); zeros without."""
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE:
        S += tl.load(ptr + i_nh.to(tl.int64) * K * V + okv, mask=mkv, other=0.).to(tl.float32)
    return S


@triton.jit
def _kexp(gkb, r_last, ck, K, H, i_h, BK: tl.constexpr, GK: tl.constexpr):
    """A chunk's key-gate exponent of the state rows (its last prefix sum, read at physical row ``r_last``), as a
    [BK] vector (a head's one gate broadcast)."""
    bl = _grow(gkb, r_last, ck, K, H, i_h, GK)
    if GK == 2:
        e = tl.reshape(bl, [BK])
    else:
        e = tl.zeros([BK], dtype=tl.float32) + bl
    return e


@triton.jit
def _chunk_decay(S, ak, av, gkb, gvb, r_last, ck, cv, K, V, H, i_h, BK: tl.constexpr, GK: tl.constexpr,
                 GV: tl.constexpr, SUMMARY: tl.constexpr):
    """A state (or state gradient) tile decayed over a whole chunk: rows by exp of the key-gate exponent, columns
    by exp of the value gates' last prefix sum; a summary pass also adds the exponents to ``ak`` / ``av``."""
    if GK > 0:
        ek = _kexp(gkb, r_last, ck, K, H, i_h, BK, GK)
        S = S * tl.exp(ek)[:, None]
        if SUMMARY:
            ak += ek
    if GV:
        ev = _hrow(gvb, r_last, cv, V, H, i_h)
        S = S * tl.exp(ev)[None, :]
        if SUMMARY:
            av += ev
    return S, ak, av


@triton.jit
def _seg_decay(S, sak, sav, seg, ck, cv, K, V):
    """A state tile carried over summarised segment ``seg`` (a row of sak / sav): rows decayed by exp of its key
    exponents, columns by exp of its value ones."""
    ek = tl.exp(tl.load(sak + seg * K + ck, mask=ck < K, other=0.))
    ev = tl.exp(tl.load(sav + seg * V + cv, mask=cv < V, other=0.))
    return S * ek[:, None] * ev[None, :]


@triton.jit
def _entry_state(init, USE_INIT: tl.constexpr, SUMMARY: tl.constexpr, sak, sav, sb, sbx, i_nh, i_s, NSEG, ck, cv,
                 mkv, okv, K, V, BK: tl.constexpr, BV: tl.constexpr, ADJ: tl.constexpr):
    """(S, S_ex): the state tile a program starts its segment from: zero for a summary, else ``init`` ([S, H, K,
    V]: h0 or dht; zero without) carried through the earlier segments' summaries (each decays it and adds its
    local state); ADJ: also that state without the boundary token's outer product (the previous segment's
    ``sbx`` in place of its ``sb``; zero entering segment 0)."""
    S = tl.zeros([BK, BV], dtype=tl.float32)
    S_ex = tl.zeros([BK, BV], dtype=tl.float32)
    if not SUMMARY:
        S = _state_in(init, i_nh, okv, mkv, K, V, BK, BV, USE_INIT)
        base = i_nh.to(tl.int64) * NSEG
        for j in range(i_s):
            S = _seg_decay(S, sak, sav, base + j, ck, cv, K, V)
            if ADJ:   # read for the last summary only (its value is what is kept)
                S_ex = S + tl.load(sbx + (base + j) * K * V + okv, mask=mkv & (j == i_s - 1), other=0.)
            S = S + tl.load(sb + (base + j) * K * V + okv, mask=mkv, other=0.)
    return S, S_ex


@triton.jit
def _summary_store(sak, sav, sb, sbx, ak, av, S, S_ex, i_nh, i_s, NSEG, ck, cv, mkv, okv, K, V, ADJ: tl.constexpr):
    """Segment i_s's summary: key / value gate exponents summed over its chunks and its local final state (the
    programs of one state row or column store the same exponents); ADJ: also that state without its boundary
    token's outer product."""
    base = i_nh.to(tl.int64) * NSEG + i_s
    tl.store(sak + base * K + ck, ak, mask=ck < K)
    tl.store(sav + base * V + cv, av, mask=cv < V)
    tl.store(sb + base * K * V + okv, S, mask=mkv)
    if ADJ:
        tl.store(sbx + base * K * V + okv, S_ex, mask=mkv)


@jit
def _fwd_h_kernel(k, v, gkb, gks, gvb, gvs, h, h0, ht, ht_ex, do, yq, sak, sav, sb, sbx, cu, chunk_off, N, NT,
                  H, K, V, SEGC, NSEG, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GK: tl.constexpr,
                  GV: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr, ADJ: tl.constexpr,
                  REVERSE: tl.constexpr, VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr,
                  SUMMARY: tl.constexpr):
    """Sequential over the chunks of segment i_s (SEGC chunks; program_id(0) = i_s * NK + i_k): h[c] = state
    before chunk c; ht = final state. SUMMARY: the segment's summed key / value gate exponents and local final
    state (from zero) into sak / sav / sb instead; the main pass starts from the state the earlier segments'
    summaries compose. ADJ (bonus form, backward): also yq[c, i_v] = this V block's part of
    h_ex[c] @ do_first, h_ex[c] being h[c] without the newest token's k v^T (without h0 for the first chunk):
    the gate-gradient part of the chunk's first row (see _bwd_A)."""
    i_v, i_nh, i_s, i_h, bos, eos, c0, L, nt, ck, cv, mkv, okv = _segment_tile(cu, chunk_off, N, NT, H, K, V, C, BK,
                                                                               BV, VARLEN)
    it0 = i_s * SEGC
    if (it0 < nt) | (i_s == 0):
        it1 = tl.minimum(nt, it0 + SEGC)
        DT = k.dtype.element_ty if LOWP else tl.float32
        S, S_ex = _entry_state(h0, USE_H0, SUMMARY, sak, sav, sb, sbx, i_nh, i_s, NSEG, ck, cv, mkv, okv, K, V, BK,
                               BV, ADJ)
        ak = tl.zeros([BK], dtype=tl.float32)
        av = tl.zeros([BV], dtype=tl.float32)
        ar = tl.arange(0, C)
        for it in range(it0, it1):
            if not SUMMARY:
                tl.store(h + ((c0 + it) * H + i_h).to(tl.int64) * K * V + okv, S, mask=mkv)
            if ADJ and not SUMMARY:
                do_f = _hrow(do, phys_row(it * C, bos, eos, REVERSE), cv, V, H, i_h)
                tl.store(yq + (((c0 + it) * tl.num_programs(1) + i_v) * H + i_h).to(tl.int64) * K + ck,
                         tl.sum(S_ex * do_f[None, :], axis=1), mask=ck < K)
            t, m, r = _rows(it * C, ar, L, bos, eos, REVERSE)
            k_c = _htile(k, r, m, ck, K, H, i_h)
            v_c = _htile(v, r, m, cv, V, H, i_h)
            t_last = tl.minimum(it * C + C, L) - 1
            r_last = phys_row(t_last, bos, eos, REVERSE)
            S, ak, av = _chunk_decay(S, ak, av, gkb, gvb, r_last, ck, cv, K, V, H, i_h, BK, GK, GV, SUMMARY)
            if GK > 0:
                k_c = _decay(k_c, _gtile(gks, r, m, ck, K, H, i_h, GK), m)
            if GV:
                v_c = _decay(v_c, _htile(gvs, r, m, cv, V, H, i_h), m)
            if ADJ:
                # the state without the chunk's last token, then that token's k v^T (gate factor exp(0)) exactly
                S_ex = S + _mm(tl.trans(tl.where((t != t_last)[:, None], k_c, 0.).to(DT)), v_c.to(DT), IEEE)
                S = S_ex + _hrow(k, r_last, ck, K, H, i_h)[:, None] * _hrow(v, r_last, cv, V, H, i_h)[None, :]
            else:
                if STORE_HT:
                    if it == nt - 1:
                        # final state without the last token's own k v^T: the gate-gradient term of the final
                        # state is taken from it, so that O(1) parts cancelling exactly are never formed
                        k_ex = tl.where((t != L - 1)[:, None], k_c, 0.)
                        S_ex = S + _mm(tl.trans(k_ex.to(DT)), v_c.to(DT), IEEE)
                S += _mm(tl.trans(k_c.to(DT)), v_c.to(DT), IEEE)
        if SUMMARY:
            _summary_store(sak, sav, sb, sbx, ak, av, S, S_ex, i_nh, i_s, NSEG, ck, cv, mkv, okv, K, V, ADJ)
        elif STORE_HT:
            if it1 == nt:
                tl.store(ht + i_nh.to(tl.int64) * K * V + okv, S, mask=mkv)
                tl.store(ht_ex + i_nh.to(tl.int64) * K * V + okv, S_ex, mask=mkv)


@jit
def _bwd_dh_kernel(q, do, gkb, gkr, gvb, dh, dht, dh0, v, zk, h, yq, rk, sak, sav, sb, sbx, cu, chunk_off, scale,
                   N, NT, H, K, V, SEGC, NSEG, C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GK: tl.constexpr,
                   GV: tl.constexpr, USE_U: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                   ADJ: tl.constexpr, REVERSE: tl.constexpr, VARLEN: tl.constexpr, IEEE: tl.constexpr,
                   LOWP: tl.constexpr, SUMMARY: tl.constexpr):
    """Right to left over the chunks of segment i_s of reversed chunk order (as _fwd_h_kernel's segments):
    dh[c] = gradient of the state after chunk c; dh0 = gradient of h0; SUMMARY as in _fwd_h_kernel. ADJ (bonus
    form): also zk[c, i_v] = this V block's part of dh_ex[c] @ v_last, dh_ex[c] being dh[c] without
    the next chunk's first token (zero for the last chunk: dht): the gate-gradient part of the chunk's last row;
    and rk[c, i_v] = this V block's part of the key-gate gradient that the later chunks add to chunk c (before the
    last one), <S, dS> without the pair (next chunk's first token, chunk's last token), whose gate factor is
    exp(0): rowsum(h[c + 1] * dh_ex[c]) + scale * q_first(c + 1) * yq[c + 1] (h_ex[c + 1] @ do_first)."""
    i_v, i_nh, i_s, i_h, bos, eos, c0, L, nt, ck, cv, mkv, okv = _segment_tile(cu, chunk_off, N, NT, H, K, V, C, BK,
                                                                               BV, VARLEN)
    j0 = i_s * SEGC
    if (j0 < nt) | (i_s == 0):
        j1 = tl.minimum(nt, j0 + SEGC)
        DT = q.dtype.element_ty if LOWP else tl.float32
        dS, dS_ex = _entry_state(dht, USE_DHT, SUMMARY, sak, sav, sb, sbx, i_nh, i_s, NSEG, ck, cv, mkv, okv, K, V,
                                 BK, BV, ADJ)
        ak = tl.zeros([BK], dtype=tl.float32)
        av = tl.zeros([BV], dtype=tl.float32)
        ar = tl.arange(0, C)
        for j in range(j0, j1):
            it = nt - 1 - j
            if not SUMMARY:
                tl.store(dh + ((c0 + it) * H + i_h).to(tl.int64) * K * V + okv, dS, mask=mkv)
            if ADJ and not SUMMARY:
                v_l = _hrow(v, phys_row(tl.minimum(it * C + C, L) - 1, bos, eos, REVERSE), cv, V, H, i_h)
                o_kv = (((c0 + it) * tl.num_programs(1) + i_v) * H + i_h).to(tl.int64) * K + ck
                tl.store(zk + o_kv, tl.sum(dS_ex * v_l[None, :], axis=1), mask=ck < K)
                # the next chunk's share of the gate gradient (zero after the last chunk: its final-state term is
                # added on the host)
                nx = it + 1 < nt
                h_n = tl.load(h + ((c0 + it + 1) * H + i_h).to(tl.int64) * K * V + okv, mask=mkv & nx, other=0.)
                q_n = _hrow(q, phys_row(tl.minimum(it * C + C, L - 1), bos, eos, REVERSE), ck, K, H, i_h)
                y_n = tl.load(yq + o_kv + tl.num_programs(1) * H * K, mask=(ck < K) & nx, other=0.)
                tl.store(rk + o_kv, tl.sum(h_n * dS_ex, axis=1) + scale * q_n * y_n, mask=ck < K)
            t, m, r = _rows(it * C, ar, L, bos, eos, REVERSE)
            q_c = _htile(q, r, m, ck, K, H, i_h) * scale
            do_c = _htile(do, r, m, cv, V, H, i_h)
            r_last = phys_row(tl.minimum(it * C + C, L) - 1, bos, eos, REVERSE)
            dS, ak, av = _chunk_decay(dS, ak, av, gkb, gvb, r_last, ck, cv, K, V, H, i_h, BK, GK, GV, SUMMARY)
            if GK > 0:
                q_c = q_c * tl.exp(_qgate(gkb, gkr, r, m, ck, K, H, i_h, GK, USE_U))
            if GV:
                do_c = do_c * tl.exp(_htile(gvb, r, m, cv, V, H, i_h))
            if ADJ:
                # without the chunk's first token, then that token's q do^T (gate factor exp(0)) exactly
                r_f = phys_row(it * C, bos, eos, REVERSE)
                dS_ex = dS + _mm(tl.trans(tl.where((t != it * C)[:, None], q_c, 0.).to(DT)), do_c.to(DT), IEEE)
                dS = dS_ex + (_hrow(q, r_f, ck, K, H, i_h) * scale)[:, None] * _hrow(do, r_f, cv, V, H, i_h)[None, :]
            else:
                dS += _mm(tl.trans(q_c.to(DT)), do_c.to(DT), IEEE)
        if SUMMARY:
            _summary_store(sak, sav, sb, sbx, ak, av, dS, dS_ex, i_nh, i_s, NSEG, ck, cv, mkv, okv, K, V, ADJ)
        elif STORE_DH0:
            if j1 == nt:
                tl.store(dh0 + i_nh.to(tl.int64) * K * V + okv, dS, mask=mkv)


# ----------------------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------------------
def _state_blocks(K, V, nprog):
    """State tiles of the two sequential kernels: smaller tiles when few (sequence, head) pairs would leave
    most of the GPU idle (one program walks all chunks of its tile)."""
    BK, BV = min(64, _pow2(K)), min(64, _pow2(V))
    while nprog * cdiv(K, BK) * cdiv(V, BV) < 264 and max(BK, BV) > 32:
        if BV >= BK:
            BV //= 2
        else:
            BK //= 2
    return BK, BV


def _gate_cumsum(g, meta, reverse):
    """(chunk-local prefix sums, chunk-local exclusive suffix sums) of the log gates, fp32."""
    if g is None:
        return None, None
    scalar = g.dim() == 3
    D = 1 if scalar else g.shape[-1]
    out = alloc(g.shape, torch.float32, g.device)
    suf = alloc(g.shape, torch.float32, g.device)
    _cumsum_kernel[(meta.nchunks, meta.nbh)](g, out, suf, meta.cu, meta.chunk_seq, meta.chunk_idx, meta.N, meta.NT,
                                             meta.H, D, C=meta.C, BD=_pow2(D, 1), SCALAR=scalar,
                                             REVERSE=reverse, VARLEN=meta.varlen)
    return out, suf


def _revcumsum(x, meta, reverse, carry):
    """Reverse cumulative sum over each sequence of a per-token buffer ([B, N, H, D] or [B, N, H]) given the sum
    over every later chunk (``carry``, per chunk: [chunks, H, D] or [chunks, H]): within each chunk, plus that."""
    scalar = x.dim() == 3
    D = 1 if scalar else x.shape[-1]
    BD = 1 if scalar else min(64, _pow2(D))
    out = alloc(x.shape, x.dtype, x.device)
    grid = (1 if scalar else cdiv(D, BD), meta.nchunks, meta.nbh)
    _revcumsum_kernel[grid](x, out, carry.contiguous(), meta.cu, meta.chunk_seq, meta.chunk_idx, meta.N, meta.NT,
                            meta.H, D, C=meta.C, BD=BD, SCALAR=scalar, REVERSE=reverse, VARLEN=meta.varlen)
    return out


def _boundary_terms(h, dh, ht_ex, meta):
    """<S, dS> at every chunk end, S the state after the chunk and dS its gradient, as an fp32 [chunks, H, K, V]
    product (``h`` of the next chunk times ``dh``; at a sequence's last chunk ``ht_ex`` (the final state without
    its last token's k v^T, or zero) times ``dh`` there, which is dht). Summed over V (key gates) or K (value
    gates), it is the gate gradient that every later token of the sequence adds to the tokens of the chunk, in
    closed form: the reverse cumulative sum then runs within chunks only (``_revcumsum(carry=...)``) and its
    rounding errors no longer add up over the sequence (they grew as sqrt(N): GSA bf16 dL/dg 1.06e-2 at
    N = 4097). Without the RWKV6 bonus no term of it has gate factor exp(0), so no O(1) parts cancel in it (the
    bonus form's share comes from _bwd_dh_kernel, rk)."""
    T = h.shape[0]
    prod = torch.empty_like(dh)
    if T == 0:
        return prod
    rows, seqs = meta.last_chunk, meta.last_seq
    torch.mul(h[1:], dh[:-1], out=prod[:-1])
    if ht_ex is not None:
        prod.index_copy_(0, rows, ht_ex.index_select(0, seqs) * dh.index_select(0, rows))
    else:
        prod.index_fill_(0, rows, 0.)
    return prod


def _final_terms(carry, dht, ht_ex, meta):
    """Adds <ht_ex, dht> summed over V ([S, H, K]) to ``carry`` ([chunks, H, K]) at each sequence's last chunk."""
    if dht is not None and ht_ex is not None and carry.shape[0]:
        carry.index_add_(0, meta.last_chunk, (dht.float() * ht_ex).sum(-1).index_select(0, meta.last_seq))
    return carry


def segments_config():
    """``STATE_LAUNCH`` under the options' ``launch['gla_state']``."""
    return current_options().settings('gla_state', STATE_LAUNCH)


def _segments(meta, tiles, K, V, device, adj):
    """(SEGC, NSEG, (sak, sav, sb, sbx)): chunks a segment, segments of the longest sequence, and the summaries'
    fp32 buffers ([S * H, NSEG, K], [.., V], [.., K, V], and for the bonus form's boundary terms (``adj``) the
    local states without their boundary token's outer product, [.., K, V]; stand-ins when unsplit or unused). A
    split walks each chunk twice (summary, then main pass), so it is taken only at three segments or more; for the
    bonus form's backward only with ``split_adj``."""
    cfg = segments_config()
    most = meta.max_chunks
    if cfg['segment']:
        segc = max(1, cfg['segment'])
    else:
        nseg = min(cdiv(cfg['progs_per_sm'] * num_sms(device), tiles), most // max(1, cfg['min_segment']))
        segc = cdiv(most, nseg) if nseg >= 3 else most
    nseg = cdiv(most, segc) if segc else 1
    if nseg <= 1 or (adj and not cfg['split_adj']):
        return max(most, 1), 1, (dummy(device, torch.float32),) * 4
    nh = meta.nseq * meta.H
    f32 = dict(dtype=torch.float32, device=device)
    sbx = torch.empty((nh, nseg, K, V), **f32) if adj else dummy(device, torch.float32)
    return segc, nseg, (torch.empty((nh, nseg, K), **f32), torch.empty((nh, nseg, V), **f32),
                        torch.empty((nh, nseg, K, V), **f32), sbx)


def _fwd_h(k, v, gkb, gks, gvb, gvs, h0, store_ht, meta, GK, reverse, ieee, lowp=None, do=None,
           h_dtype=torch.float32):
    """States before every chunk h (stored as ``h_dtype``), final state ht and ht_ex (ht without the last token's
    k v^T; fp32; None without ``store_ht``), and with ``do`` (the bonus form's backward) yq ``[chunks, NV, H, K]``:
    partial sums over the NV value blocks of h_ex @ do_first (see _fwd_h_kernel), else None."""
    K, V = k.shape[-1], v.shape[-1]
    H = meta.H
    BKh, BVh = _state_blocks(K, V, meta.nseq * H)
    NK, NV = cdiv(K, BKh), cdiv(V, BVh)
    h = alloc((meta.total_chunks, H, K, V), h_dtype, k.device)
    ht = alloc((meta.nseq, H, K, V), torch.float32, k.device) if store_ht else None
    ht_ex = alloc((meta.nseq, H, K, V), torch.float32, k.device) if store_ht else None
    yq = alloc((meta.total_chunks, NV, H, K), torch.float32, k.device) if do is not None else None
    SEGC, NSEG, summ = _segments(meta, NK * NV * meta.nseq * H, K, V, k.device, do is not None)
    args = (k, v, _or(gkb, k), _or(gks, k), _or(gvb, v), _or(gvs, v), h, h0 if h0 is not None else h, _or(ht, h),
            _or(ht_ex, h), _or(do, v), _or(yq, h), *summ, meta.cu, meta.chunk_off, meta.N, meta.NT, H, K, V, SEGC,
            NSEG)
    flags = dict(C=meta.C, BK=BKh, BV=BVh, GK=GK, GV=gvb is not None, USE_H0=h0 is not None, STORE_HT=store_ht,
                 ADJ=do is not None, REVERSE=reverse, VARLEN=meta.varlen, IEEE=_prec(ieee),
                 LOWP=_lowp(ieee) if lowp is None else lowp)
    if NSEG > 1:
        _fwd_h_kernel[(NK * (NSEG - 1), NV, meta.nseq * H)](*args, **flags, SUMMARY=True)
    _fwd_h_kernel[(NK * NSEG, NV, meta.nseq * H)](*args, **flags, SUMMARY=False)
    return h, ht, ht_ex, yq


def _bwd_dh(q, do, gkb, gk, gvb, gv, u, dht, h0, scale, meta, GK, reverse, ieee, lowp, v=None, h=None, yq=None,
            dh_dtype=torch.float32):
    """State gradients right to left: dh (after every chunk), dh0 (None without h0), and with ``v`` (the bonus
    form; then also ``h`` and ``yq`` from ``_fwd_h(do=...)``) zk and rk ``[chunks, NV, H, K]``: partial sums of
    dh_ex @ v_last and of the later chunks' key-gate gradient share (see _bwd_dh_kernel), else None."""
    K, V = q.shape[-1], do.shape[-1]
    H = meta.H
    BKh, BVh = _state_blocks(K, V, meta.nseq * H)
    NK, NV = cdiv(K, BKh), cdiv(V, BVh)
    dh = alloc((meta.total_chunks, H, K, V), dh_dtype, q.device)
    dh0 = alloc((meta.nseq, H, K, V), torch.float32, q.device) if h0 is not None else None
    zk = alloc((meta.total_chunks, NV, H, K), torch.float32, q.device) if v is not None else None
    rk = alloc((meta.total_chunks, NV, H, K), torch.float32, q.device) if v is not None else None
    SEGC, NSEG, summ = _segments(meta, NK * NV * meta.nseq * H, K, V, q.device, v is not None)
    args = (q, do, _or(gkb, q), _or(gk, q), _or(gvb, q), dh, _or(dht, dh), _or(dh0, dh), _or(v, do), _or(zk, dh),
            _or(h, dh), _or(yq, dh), _or(rk, dh), *summ, meta.cu, meta.chunk_off, scale, meta.N, meta.NT, H, K, V,
            SEGC, NSEG)
    flags = dict(C=meta.C, BK=BKh, BV=BVh, GK=GK, GV=gv is not None, USE_U=u is not None, USE_DHT=dht is not None,
                 STORE_DH0=h0 is not None, ADJ=v is not None, REVERSE=reverse, VARLEN=meta.varlen,
                 IEEE=_prec(ieee), LOWP=lowp)
    if NSEG > 1:
        _bwd_dh_kernel[(NK * (NSEG - 1), NV, meta.nseq * H)](*args, **flags, SUMMARY=True)
    _bwd_dh_kernel[(NK * NSEG, NV, meta.nseq * H)](*args, **flags, SUMMARY=False)
    return dh, dh0, zk, rk
