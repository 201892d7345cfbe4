"""Chunked Triton kernels of the gated linear attention core (forward and backward).

Recurrence (per head, state ``S`` of shape ``[K, V]``, fp32)::

    S_t = diag(exp(gk_t)) S_{t-1} diag(exp(gv_t)) + k_t v_t^T,   o_t = scale * S_t^T q_t
    (with the RWKV6 bonus u: o_t = scale * (S_{t-1} + diag(u) k_t v_t^T)^T q_t)

Algorithm. Time is cut into chunks of ``C`` (64) tokens, chunks into sub-blocks of ``BS`` (16).
Gates enter only as exp of *differences* of chunk-local cumulative log gates ``b`` (fp32, computed by
``_cumsum_kernel``), arranged so that every exponent is <= 0 (log gates are <= 0):
  * inter-chunk: ``o += (q * exp(b_t)) @ S_chunk_start`` and ``S <- exp(b_last) S + (k * exp(b_last - b_s))^T v``;
  * intra-chunk, sub-block pair (i > j): reference row ``r`` = last row of sub-block i-1, scores
    ``(q_i * exp(b_i - b_r)) @ (k_j * exp(b_r - b_j))^T`` (both factors <= 1);
  * intra-chunk, diagonal sub-block: exact ``sum_k q_tk k_sk exp(b_tk - b_sk)`` one column s at a time.
So log gates of -20 (or -inf) and of ~0 stay finite. ``reverse=True`` maps logical time t to physical row
``eos - 1 - t`` inside every kernel: nothing is flipped in memory. Packed sequences (``cu_seqlens``) use
per-chunk tables built on the host.

Two paths share the state kernels (``_fwd_h_kernel``, ``_bwd_dh_kernel``) and gate cumsums:

* A path (every call without value gates; option ``gla_a_path``): ``_fwd_A_kernel`` forms the intra-chunk scores
  ``A[t, s] = scale * sum_k q_tk k_sk exp(bq_tk - b_sk)`` (s <= t; with the bonus s < t and ``A[t, t] =
  scale * q_t . (u * k_t)``) once per chunk with the sub-block scheme above, fp32 ``[B, N, H, C]``, kept for the
  backward; ``_fwd_oA_kernel``: ``o = scale * (q * exp(bq)) @ S + A @ v``. Backward: ``_bwd_dA_kernel``
  (``dA = scale * tril(do @ v^T)``), ``_bwd_dvA_kernel`` (``dv = A^T @ do + (k * exp(b_last - b)) @ dh``),
  ``_bwd_intra_kernel`` (intra-chunk dq/dk from dA, sub-block scheme, once), ``_bwd_inter_kernel`` (inter-chunk
  dq/dk from h/dh, the t == s terms, the key-gate gradient buffer). Only the two sub-block kernels hold [BS, *]
  dots; the other four are full-chunk matmuls.
* sub-block path (value gates, GSA's first pass): ``_fwd_o_kernel``, ``_bwd_dv_kernel``, ``_bwd_dq_kernel``,
  ``_bwd_dk_kernel`` each walk the sub-blocks and re-form the intra-chunk scores.

Backward: the gate cumsums are the forward's (kept for the backward, option ``gla_keep_cumsum``), the states are
recomputed (``_fwd_h_kernel``), state gradients run right to left
(``_bwd_dh_kernel``), then the chunk-parallel kernels of the path. Gate gradients use
``dL/db_t = q_t * dq_t - k_t * dk_t`` (value gate: ``o_t * do_t - v_t * dv_t``) plus the final-state term,
followed by a reverse cumulative sum over time (``_revcumsum_kernel``); on the sub-block path the dq kernel writes
``q * dq`` (fp32) into the key-gate buffer and the dk kernel (launched after it) subtracts ``k * dk``; on the
A path ``_bwd_inter_kernel`` writes the difference.
"""
import os

import torch
import triton
import triton.language as tl

from ..common.jit import chunk_info, load_row, load_tile, phys_row, seq_info, store_tile
from ..common.options import alloc, current_options
from ..common.varlen import PackedSeqs

CHUNK = 64
SUB = 16
NEG_INF = tl.constexpr(float('-inf'))


# ----------------------------------------------------------------------------------------------------------
# small jit helpers
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _gtile(ptr, r, m, c, D, H, i_h, G: tl.constexpr):
    """Gate tile: [BS, BD] for per-dimension gates (G == 2), [BS, 1] for one gate per head (G == 1)."""
    if G == 2:
        x = load_tile(ptr, r, m, c, D, H * D, i_h * D)
    else:
        x = tl.load(ptr + r.to(tl.int64) * H + i_h, mask=m, other=0.).to(tl.float32)[:, None]
    return x


@triton.jit
def _grow(ptr, r, c, D, H, i_h, G: tl.constexpr):
    """Gate row: [1, BD] for G == 2, a scalar for G == 1."""
    if G == 2:
        x = load_row(ptr, r, c, D, H * D, i_h * D)[None, :]
    else:
        x = tl.load(ptr + r.to(tl.int64) * H + i_h).to(tl.float32)
    return x


@triton.jit
def _gvec(ptr, r, m, H, i_h):
    return tl.load(ptr + r.to(tl.int64) * H + i_h, mask=m, other=0.).to(tl.float32)


@triton.jit
def _mm(a, b, IEEE: tl.constexpr):
    """fp32 operands: exact fp32 ("ieee", IEEE == 1) for fp32 inputs, else tf32 (IEEE == 0) or 3xtf32 (IEEE == 2,
    ~fp32 accuracy at three tensor-core passes; explicit, so an importer that changes TRITON_F32_DEFAULT changes
    nothing); 16-bit operands: bf16/fp16 tensor cores, fp32 accumulate."""
    if IEEE == 1:
        out = tl.dot(a, b, input_precision="ieee")
    elif a.dtype == tl.float32:
        if IEEE == 2:
            out = tl.dot(a, b, input_precision="tf32x3")
        else:
            out = tl.dot(a, b, input_precision="tf32")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _state_tile(ptr, hc, H, i_h, ck, cv, K, V):
    """[BK, BV] tile of the fp32 per-chunk state (h or dh) of chunk row ``hc``, head ``i_h``."""
    return tl.load(ptr + (hc * H + i_h).to(tl.int64) * K * V + ck[:, None] * V + cv[None, :],
                   mask=(ck[:, None] < K) & (cv[None, :] < V), other=0.)


@triton.jit
def _diag_self_term(dov, dA_tt, x, u, i_h, ck, K, USE_U: tl.constexpr):
    """The t == s terms of dq (x = k) or dk (x = q), left out of the gate gradient: the bonus
    (do.v) u * x, or dA[t, t] * x."""
    if USE_U:
        uu = tl.load(u + i_h * K + ck, mask=ck < K, other=0.).to(tl.float32)
        out = dov[:, None] * uu[None, :] * x
    else:
        out = dA_tt[:, None] * x
    return out


@triton.jit
def _lpre(g, EXCL: tl.constexpr, G: tl.constexpr, BS: tl.constexpr):
    """Sub-block-local prefix sums of a gate tile (inclusive, or exclusive for the bonus form).
    G == 1 (tile [BS, 1]): masked sums instead of tl.cumsum, whose lowering of [BS, 1] tensors trips an
    assertion in Triton 3.6 (ScanOpToLLVM)."""
    if G == 1:
        ar = tl.arange(0, BS)
        g1 = tl.sum(g, axis=1)
        if EXCL:
            msk = ar[None, :] < ar[:, None]
        else:
            msk = ar[None, :] <= ar[:, None]
        p = tl.sum(tl.where(msk, g1[None, :], 0.), axis=1)[:, None]
    else:
        p = tl.cumsum(g, axis=0)
        if EXCL:
            p = p - g
    return p


@triton.jit
def _lsuf(g, G: tl.constexpr, BS: tl.constexpr):
    """Sub-block-local exclusive suffix sums of a gate tile: sum over the rows after each row."""
    if G == 1:
        ar = tl.arange(0, BS)
        g1 = tl.sum(g, axis=1)
        p = tl.sum(tl.where(ar[None, :] > ar[:, None], g1[None, :], 0.), axis=1)[:, None]
    else:
        p = tl.cumsum(g, axis=0, reverse=True) - g
    return p


# Diagonal sub-blocks. The exponent of pair (t, s), s <= t, is sum_{r in (s, t]} g_r (minus g_t in the bonus form),
# accumulated column by column from the diagonal outwards (s = BS-1 ... 0): every partial sum covers a run of
# consecutive same-sign log gates, so it is accurate relative to itself, also for log gates of -20 (a difference
# of two large cumulative sums would lose ~|cumsum| * 6e-8 in the exponent).
@triton.jit
def _diag_scores(L_, gT, R, gR, base, t_i, m_i, seq_len, bos, eos, c, D, H, i_h,
                 BS: tl.constexpr, STRICT: tl.constexpr, REVERSE: tl.constexpr):
    """M[t, s] = sum_d L_[t, d] R[s, d] exp(sum_{r in (s, t]} g[r, d] - gT[t, d]) for s <= t (s < t)."""
    ar = tl.arange(0, BS)
    M = tl.zeros([BS, BS], dtype=tl.float32)
    acc = tl.zeros_like(L_)
    g_next = tl.sum(tl.zeros_like(L_), axis=0)
    for jj in range(BS):
        s = BS - 1 - jj
        ts = base + s
        ms = ts < seq_len
        rs = phys_row(ts, bos, eos, REVERSE)
        acc += tl.where((ar > s)[:, None], g_next[None, :], 0.)
        R_s = tl.load(R + rs.to(tl.int64) * H * D + i_h * D + c, mask=(c < D) & ms, other=0.).to(tl.float32)
        g_s = tl.load(gR + rs.to(tl.int64) * H * D + i_h * D + c, mask=(c < D) & ms, other=0.).to(tl.float32)
        if STRICT:
            keep = (t_i > ts) & m_i
        else:
            keep = (t_i >= ts) & m_i
        e = tl.exp(tl.where(keep[:, None], acc - gT, NEG_INF))
        a = tl.sum(L_ * R_s[None, :] * e, axis=1)
        M = tl.where(ar[None, :] == s, a[:, None], M)
        g_next = g_s
    return M


@triton.jit
def _diag_gmm(M, gT, R, gR, base, t_i, m_i, seq_len, bos, eos, c, D, H, i_h,
              BS: tl.constexpr, BD: tl.constexpr, STRICT: tl.constexpr, REVERSE: tl.constexpr):
    """Y[t, d] = sum_s M[t, s] R[s, d] exp(sum_{r in (s, t]} g[r, d] - gT[t, d]) on a diagonal sub-block."""
    ar = tl.arange(0, BS)
    Y = tl.zeros([BS, BD], dtype=tl.float32)
    acc = tl.zeros([BS, BD], dtype=tl.float32)
    g_next = tl.zeros([BD], dtype=tl.float32)
    for jj in range(BS):
        s = BS - 1 - jj
        ts = base + s
        ms = ts < seq_len
        rs = phys_row(ts, bos, eos, REVERSE)
        acc += tl.where((ar > s)[:, None], g_next[None, :], 0.)
        R_s = tl.load(R + rs.to(tl.int64) * H * D + i_h * D + c, mask=(c < D) & ms, other=0.).to(tl.float32)
        g_s = tl.load(gR + rs.to(tl.int64) * H * D + i_h * D + c, mask=(c < D) & ms, other=0.).to(tl.float32)
        if STRICT:
            keep = (t_i > ts) & m_i
        else:
            keep = (t_i >= ts) & m_i
        e = tl.exp(tl.where(keep[:, None], acc - gT, NEG_INF))
        mcol = tl.sum(tl.where(ar[None, :] == s, M, 0.), axis=1)
        Y += mcol[:, None] * R_s[None, :] * e
        g_next = g_s
    return Y


@triton.jit
def _diag_gmmT(M, Lp, l_scale, gR, base, seq_len, bos, eos, c, D, H, i_h,
               BS: tl.constexpr, BD: tl.constexpr, STRICT: tl.constexpr, SHIFT: tl.constexpr,
               REVERSE: tl.constexpr):
    """Z[s, d] = sum_t M[t, s] L[t, d] exp(sum_{r in (s, t]} g[r, d] (- g[t, d] if SHIFT)) for s <= t (s < t)
    on a diagonal sub-block. One outer product per row t: L's row is read from memory (times ``l_scale``), M's
    row is a column of M^T (a within-warp reduction); a sum over t inside a tile would cross warps every step."""
    ar = tl.arange(0, BS)
    MT = tl.trans(M)
    Z = tl.zeros([BS, BD], dtype=tl.float32)
    acc = tl.zeros([BS, BD], dtype=tl.float32)
    for t in range(BS):
        tt = base + t
        mt = tt < seq_len
        off = phys_row(tt, bos, eos, REVERSE).to(tl.int64) * H * D + i_h * D + c
        g_t = tl.load(gR + off, mask=(c < D) & mt, other=0.).to(tl.float32)
        L_t = tl.load(Lp + off, mask=(c < D) & mt, other=0.).to(tl.float32) * l_scale
        acc += tl.where((ar < t)[:, None], g_t[None, :], 0.)
        if SHIFT:
            x = acc - g_t[None, :]
        else:
            x = acc
        if STRICT:
            keep = (ar < t) & mt
        else:
            keep = (ar <= t) & mt
        e = tl.exp(tl.where(keep[:, None], x, NEG_INF))
        mrow = tl.sum(tl.where(ar[None, :] == t, MT, 0.), axis=1)
        Z += mrow[:, None] * L_t[None, :] * e
    return Z


@triton.jit
def _diag_decay(gv_t, t_i, m_i, BS: tl.constexpr, SHIFT: tl.constexpr, STRICT: tl.constexpr):
    """Scalar gates: [BS, BS] decay exp(sum_{r in (s, t]} g_r (- g_t if SHIFT)) masked to s <= t (s < t)."""
    ar = tl.arange(0, BS)
    # x[t, s] = sum_{r in (s, t]} g_r as a masked sum over r (axis 2)
    inr = (ar[None, None, :] > ar[None, :, None]) & (ar[None, None, :] <= ar[:, None, None])
    x = tl.sum(tl.where(inr, gv_t[None, None, :], 0.), axis=2)
    if SHIFT:
        x = x - gv_t[:, None]
    if STRICT:
        keep = (t_i[:, None] > t_i[None, :]) & m_i[:, None]
    else:
        keep = (t_i[:, None] >= t_i[None, :]) & m_i[:, None]
    return tl.exp(tl.where(keep, x, NEG_INF))


@triton.jit
def _to_ref(x, gr, gb, b_ref, r, m, adjacent, c, D, H, i_h, G: tl.constexpr, BS: tl.constexpr):
    """Tile ``x`` of an earlier sub-block scaled to the reference row (the last row before the current sub-block),
    every factor <= 1: the adjacent sub-block by its own suffix sums of log gates ``gr``, farther ones by
    ``b_ref - b`` (chunk prefix sums ``gb``). G == 0: no gate (``b_ref`` unused)."""
    if G > 0:
        if adjacent:
            x = x * tl.exp(_lsuf(_gtile(gr, r, m, c, D, H, i_h, G), G, BS))
        else:
            x = x * tl.exp(b_ref - _gtile(gb, r, m, c, D, H, i_h, G))
    return x


@triton.jit
def _diag_block_scores(q_i, k_i, g_i, uu, k, gkr, base, t_i, m_i, r_i, seq_len, bos, eos, ck, K, H, i_h,
                       BS: tl.constexpr, GK: tl.constexpr, USE_U: tl.constexpr, REVERSE: tl.constexpr,
                       DT: tl.constexpr, IEEE: tl.constexpr):
    """Exact scores of a diagonal sub-block: sum_k q_tk k_sk exp(bq_tk - b_sk) for s <= t (s < t with the bonus,
    whose q_t . (u * k_t) then fills the diagonal). ``g_i`` (GK == 2 with the bonus) and ``uu`` (with the bonus)
    are unused otherwise."""
    ar = tl.arange(0, BS)
    if GK == 2:
        if USE_U:
            A = _diag_scores(q_i, g_i, k, gkr, base, t_i, m_i, seq_len, bos, eos, ck, K, H, i_h, BS, True, REVERSE)
        else:
            A = _diag_scores(q_i, tl.zeros_like(q_i), k, gkr, base, t_i, m_i, seq_len, bos, eos, ck, K, H, i_h,
                             BS, False, REVERSE)
    else:
        A = _mm(q_i.to(DT), tl.trans(k_i.to(DT)), IEEE)
        if GK == 1:
            A = A * _diag_decay(_gvec(gkr, r_i, m_i, H, i_h), t_i, m_i, BS, USE_U, USE_U)
        else:
            if USE_U:
                A = tl.where((t_i[:, None] > t_i[None, :]) & m_i[:, None], A, 0.)
            else:
                A = tl.where((t_i[:, None] >= t_i[None, :]) & m_i[:, None], A, 0.)
    if USE_U:
        dg = tl.sum(q_i * uu[None, :] * k_i, axis=1)
        A += tl.where(ar[:, None] == ar[None, :], dg[:, None], 0.)
    return A


# ----------------------------------------------------------------------------------------------------------
# gate cumsums
# ----------------------------------------------------------------------------------------------------------
@triton.jit
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
        x = load_tile(g, r, m, c, D, H * D, i_h * D)
        store_tile(out, tl.cumsum(x, axis=0), r, m, c, D, H * D, i_h * D)
        store_tile(suf, tl.cumsum(x, axis=0, reverse=True) - x, r, m, c, D, H * D, i_h * D)


@triton.jit
def _revcumsum_kernel(x, out, cu, chunk_off, N, NT, H, D,
                      C: tl.constexpr, BD: tl.constexpr, SCALAR: tl.constexpr, REVERSE: tl.constexpr,
                      VARLEN: tl.constexpr):
    """out_t = sum_{t' >= t} x_t' over logical time of each sequence (fp32)."""
    i_d, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, bos, eos, c0 = seq_info(i_nh, cu, chunk_off, N, NT, H, VARLEN)
    L = eos - bos
    nt = tl.cdiv(L, C)
    if SCALAR:
        carry = tl.zeros([1], dtype=tl.float32)
        for j in range(nt):
            it = nt - 1 - j
            t = it * C + tl.arange(0, C)
            m = t < L
            r = phys_row(t, bos, eos, REVERSE)
            xt = tl.load(x + r.to(tl.int64) * H + i_h, mask=m, other=0.).to(tl.float32)
            cs = tl.cumsum(xt, axis=0)
            tot = tl.sum(xt, axis=0)
            y = carry + tot - cs + xt
            tl.store(out + r.to(tl.int64) * H + i_h, y, mask=m)
            carry += tot
    else:
        c = i_d * BD + tl.arange(0, BD)
        carry = tl.zeros([BD], dtype=tl.float32)
        for j in range(nt):
            it = nt - 1 - j
            t = it * C + tl.arange(0, C)
            m = t < L
            r = phys_row(t, bos, eos, REVERSE)
            xt = load_tile(x, r, m, c, D, H * D, i_h * D)
            cs = tl.cumsum(xt, axis=0)
            tot = tl.sum(xt, axis=0)
            y = carry[None, :] + tot[None, :] - cs + xt
            store_tile(out, y, r, m, c, D, H * D, i_h * D)
            carry += tot


# ----------------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _fwd_h_kernel(k, v, gkb, gks, gvb, gvs, h, h0, ht, ht_ex, cu, chunk_off, N, NT, H, K, V,
                  C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr,
                  USE_H0: tl.constexpr, STORE_HT: tl.constexpr, REVERSE: tl.constexpr, VARLEN: tl.constexpr,
                  IEEE: tl.constexpr, LOWP: tl.constexpr):
    """Sequential over chunks: h[c] = state before chunk c; ht = final state."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h, bos, eos, c0 = seq_info(i_nh, cu, chunk_off, N, NT, H, VARLEN)
    DT = k.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    nt = tl.cdiv(L, C)
    ck = i_k * BK + tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    mkv = (ck[:, None] < K) & (cv[None, :] < V)
    okv = ck[:, None] * V + cv[None, :]
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        S += tl.load(h0 + i_nh.to(tl.int64) * K * V + okv, mask=mkv, other=0.).to(tl.float32)
    ar = tl.arange(0, C)
    S_ex = tl.zeros([BK, BV], dtype=tl.float32)
    for it in range(nt):
        tl.store(h + ((c0 + it) * H + i_h).to(tl.int64) * K * V + okv, S, mask=mkv)
        t = it * C + ar
        m = t < L
        r = phys_row(t, bos, eos, REVERSE)
        k_c = load_tile(k, r, m, ck, K, H * K, i_h * K)
        v_c = load_tile(v, r, m, cv, V, H * V, i_h * V)
        r_last = phys_row(tl.minimum(it * C + C, L) - 1, bos, eos, REVERSE)
        if GK > 0:
            bl = _grow(gkb, r_last, ck, K, H, i_h, GK)
            if GK == 2:
                S = S * tl.exp(tl.reshape(bl, [BK]))[:, None]
            else:
                S = S * tl.exp(bl)
            k_c = k_c * tl.exp(tl.where(m[:, None], _gtile(gks, r, m, ck, K, H, i_h, GK), NEG_INF))
        if GV:
            blv = load_row(gvb, r_last, cv, V, H * V, i_h * V)
            S = S * tl.exp(blv)[None, :]
            v_c = v_c * tl.exp(tl.where(m[:, None], load_tile(gvs, r, m, cv, V, H * V, i_h * V), NEG_INF))
        if STORE_HT:
            if it == nt - 1:
                # final state without the last token's own k v^T: the gate-gradient term of the final state
                # is taken from it, so that O(1) parts cancelling exactly are never formed (strong decay)
                k_ex = tl.where((t != L - 1)[:, None], k_c, 0.)
                S_ex = S + _mm(tl.trans(k_ex.to(DT)), v_c.to(DT), IEEE)
        S += _mm(tl.trans(k_c.to(DT)), v_c.to(DT), IEEE)
    if STORE_HT:
        tl.store(ht + i_nh.to(tl.int64) * K * V + okv, S, mask=mkv)
        tl.store(ht_ex + i_nh.to(tl.int64) * K * V + okv, S_ex, mask=mkv)


@triton.jit
def _fwd_o_kernel(q, k, v, gkb, gkr, gvb, gvr, u, h, o, cu, chunk_seq, chunk_idx, scale, N, NT, H, K, V,
                  C: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  GK: tl.constexpr, GV: tl.constexpr, USE_U: tl.constexpr, REVERSE: tl.constexpr,
                  VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    ar = tl.arange(0, BS)
    hs = _state_tile(h, hc, H, i_h, ck, cv, K, V)
    if USE_U:
        uu = tl.load(u + i_h * K + ck, mask=ck < K, other=0.).to(tl.float32)
    else:
        uu = 0.  # unused
    for i in range(C // BS):
        base = i_t * C + i * BS
        if base < L:
            t_i = base + ar
            m_i = t_i < L
            r_i = phys_row(t_i, bos, eos, REVERSE)
            q_i = load_tile(q, r_i, m_i, ck, K, H * K, i_h * K) * scale
            k_i = load_tile(k, r_i, m_i, ck, K, H * K, i_h * K)
            # inter-chunk: q_t exp(b_t) @ S (b_t: chunk prefix; exclusive with the bonus)
            if GK > 0:
                g_i = _gtile(gkr, r_i, m_i, ck, K, H, i_h, GK)
                bq_i = _gtile(gkb, r_i, m_i, ck, K, H, i_h, GK)
                if USE_U:
                    bq_i = bq_i - g_i
                o_i = _mm((q_i * tl.exp(bq_i)).to(DT), hs.to(DT), IEEE)
            else:
                g_i = 0.  # unused
                o_i = _mm(q_i.to(DT), hs.to(DT), IEEE)
            if GV:
                gv_i = load_tile(gvr, r_i, m_i, cv, V, H * V, i_h * V)
                o_i = o_i * tl.exp(load_tile(gvb, r_i, m_i, cv, V, H * V, i_h * V))
            # earlier sub-blocks j < i, reference row r = last row of sub-block i-1
            if i > 0:
                r_ref = phys_row(tl.maximum(base - 1, 0), bos, eos, REVERSE)
                if GK > 0:
                    qr = q_i * tl.exp(tl.where(m_i[:, None], _lpre(g_i, USE_U, GK, BS), NEG_INF))
                    bk_r = _grow(gkb, r_ref, ck, K, H, i_h, GK)
                else:
                    qr = q_i
                    bk_r = 0.
                if GV:
                    bv_r = _grow(gvb, r_ref, cv, V, H, i_h, 2)
                acc = tl.zeros([BS, BV], dtype=tl.float32)
                for j in range(i):
                    t_j = i_t * C + j * BS + ar
                    m_j = t_j < L
                    r_j = phys_row(t_j, bos, eos, REVERSE)
                    k_j = _to_ref(load_tile(k, r_j, m_j, ck, K, H * K, i_h * K), gkr, gkb, bk_r, r_j, m_j, j == i - 1,
                                  ck, K, H, i_h, GK, BS)
                    A = _mm(qr.to(DT), tl.trans(k_j.to(DT)), IEEE)
                    v_j = load_tile(v, r_j, m_j, cv, V, H * V, i_h * V)
                    if GV:
                        v_j = _to_ref(v_j, gvr, gvb, bv_r, r_j, m_j, j == i - 1, cv, V, H, i_h, 2, BS)
                    acc += _mm(A.to(DT), v_j.to(DT), IEEE)
                if GV:
                    acc = acc * tl.exp(tl.where(m_i[:, None], _lpre(gv_i, False, 2, BS), NEG_INF))
                o_i += acc
            # diagonal sub-block
            A = _diag_block_scores(q_i, k_i, g_i, uu, k, gkr, base, t_i, m_i, r_i, L, bos, eos, ck, K, H, i_h,
                                   BS, GK, USE_U, REVERSE, DT, IEEE)
            if GV:
                o_i += _diag_gmm(A, tl.zeros([BS, BV], dtype=tl.float32), v, gvr, base, t_i, m_i, L, bos, eos, cv,
                                 V, H, i_h, BS, BV, False, REVERSE)
            else:
                v_i = load_tile(v, r_i, m_i, cv, V, H * V, i_h * V)
                o_i += _mm(A.to(DT), v_i.to(DT), IEEE)
            store_tile(o, o_i, r_i, m_i, cv, V, H * V, i_h * V)


# ----------------------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _bwd_dh_kernel(q, do, gkb, gkr, gvb, dh, dht, dh0, cu, chunk_off, scale, N, NT, H, K, V,
                   C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GK: tl.constexpr, GV: tl.constexpr,
                   USE_U: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr, REVERSE: tl.constexpr,
                   VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    """Right to left over chunks: dh[c] = gradient of the state after chunk c; dh0 = gradient of h0."""
    i_k, i_v, i_nh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h, bos, eos, c0 = seq_info(i_nh, cu, chunk_off, N, NT, H, VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    nt = tl.cdiv(L, C)
    ck = i_k * BK + tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    mkv = (ck[:, None] < K) & (cv[None, :] < V)
    okv = ck[:, None] * V + cv[None, :]
    dS = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_DHT:
        dS += tl.load(dht + i_nh.to(tl.int64) * K * V + okv, mask=mkv, other=0.).to(tl.float32)
    ar = tl.arange(0, C)
    for j in range(nt):
        it = nt - 1 - j
        tl.store(dh + ((c0 + it) * H + i_h).to(tl.int64) * K * V + okv, dS, mask=mkv)
        t = it * C + ar
        m = t < L
        r = phys_row(t, bos, eos, REVERSE)
        q_c = load_tile(q, r, m, ck, K, H * K, i_h * K) * scale
        do_c = load_tile(do, r, m, cv, V, H * V, i_h * V)
        r_last = phys_row(tl.minimum(it * C + C, L) - 1, bos, eos, REVERSE)
        if GK > 0:
            b = _gtile(gkb, r, m, ck, K, H, i_h, GK)
            if USE_U:
                b = b - _gtile(gkr, r, m, ck, K, H, i_h, GK)
            bl = _grow(gkb, r_last, ck, K, H, i_h, GK)
            if GK == 2:
                dS = dS * tl.exp(tl.reshape(bl, [BK]))[:, None]
            else:
                dS = dS * tl.exp(bl)
            q_c = q_c * tl.exp(b)
        if GV:
            bv = load_tile(gvb, r, m, cv, V, H * V, i_h * V)
            blv = load_row(gvb, r_last, cv, V, H * V, i_h * V)
            dS = dS * tl.exp(blv)[None, :]
            do_c = do_c * tl.exp(bv)
        dS += _mm(tl.trans(q_c.to(DT)), do_c.to(DT), IEEE)
    if STORE_DH0:
        tl.store(dh0 + i_nh.to(tl.int64) * K * V + okv, dS, mask=mkv)


@triton.jit
def _bwd_dv_kernel(q, k, v, gkb, gkr, gks, gvb, gvr, gvs, u, o, do, dh, dv, dbv, cu, chunk_seq, chunk_idx, scale,
                   N, NT, H, K, V,
                   C: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   GK: tl.constexpr, GV: tl.constexpr, USE_U: tl.constexpr, REVERSE: tl.constexpr,
                   VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    ar = tl.arange(0, BS)
    dhs = _state_tile(dh, hc, H, i_h, ck, cv, K, V)
    if USE_U:
        uu = tl.load(u + i_h * K + ck, mask=ck < K, other=0.).to(tl.float32)
    else:
        uu = 0.  # unused
    for j in range(C // BS):
        base_j = i_t * C + j * BS
        if base_j < L:
            t_j = base_j + ar
            m_j = t_j < L
            r_j = phys_row(t_j, bos, eos, REVERSE)
            k_j = load_tile(k, r_j, m_j, ck, K, H * K, i_h * K)
            q_j = load_tile(q, r_j, m_j, ck, K, H * K, i_h * K) * scale
            if GK > 0:
                g_j = _gtile(gkr, r_j, m_j, ck, K, H, i_h, GK)
                ke = k_j * tl.exp(tl.where(m_j[:, None], _gtile(gks, r_j, m_j, ck, K, H, i_h, GK), NEG_INF))
            else:
                g_j = 0.  # unused
                ke = k_j
            dv_j = _mm(ke.to(DT), dhs.to(DT), IEEE)
            if GV:
                gv_j = load_tile(gvr, r_j, m_j, cv, V, H * V, i_h * V)
                dv_j = dv_j * tl.exp(tl.where(m_j[:, None], load_tile(gvs, r_j, m_j, cv, V, H * V, i_h * V), NEG_INF))
                # the last token's final-state path is kept out of the value-gate gradient (see dqk kernel)
                dv_last = tl.where((t_j == L - 1)[:, None], dv_j, 0.)
            for i in range(j + 1, C // BS):
                base_i = i_t * C + i * BS
                if base_i < L:
                    t_i = base_i + ar
                    m_i = t_i < L
                    r_i = phys_row(t_i, bos, eos, REVERSE)
                    r_ref = phys_row(base_i - 1, bos, eos, REVERSE)
                    q_i = load_tile(q, r_i, m_i, ck, K, H * K, i_h * K) * scale
                    if GK > 0:
                        qr = q_i * tl.exp(tl.where(m_i[:, None], _lpre(_gtile(gkr, r_i, m_i, ck, K, H, i_h, GK),
                                                                       USE_U, GK, BS), NEG_INF))
                        if i == j + 1:
                            kr = k_j * tl.exp(_lsuf(g_j, GK, BS))
                        else:
                            kr = k_j * tl.exp(_grow(gkb, r_ref, ck, K, H, i_h, GK)
                                              - _gtile(gkb, r_j, m_j, ck, K, H, i_h, GK))
                    else:
                        qr = q_i
                        kr = k_j
                    A = _mm(qr.to(DT), tl.trans(kr.to(DT)), IEEE)
                    do_i = load_tile(do, r_i, m_i, cv, V, H * V, i_h * V)
                    if GV:
                        dd = do_i * tl.exp(tl.where(m_i[:, None], _lpre(load_tile(gvr, r_i, m_i, cv, V, H * V, i_h * V),
                                                                        False, 2, BS), NEG_INF))
                        if i == j + 1:
                            fv = tl.exp(_lsuf(gv_j, 2, BS))
                        else:
                            fv = tl.exp(load_row(gvb, r_ref, cv, V, H * V, i_h * V)[None, :]
                                        - load_tile(gvb, r_j, m_j, cv, V, H * V, i_h * V))
                        dv_j += fv * _mm(tl.trans(A.to(DT)), dd.to(DT), IEEE)
                    else:
                        dv_j += _mm(tl.trans(A.to(DT)), do_i.to(DT), IEEE)
            # diagonal
            A = _diag_block_scores(q_j, k_j, g_j, uu, k, gkr, base_j, t_j, m_j, r_j, L, bos, eos, ck, K, H, i_h,
                                   BS, GK, USE_U, REVERSE, DT, IEEE)
            do_j = load_tile(do, r_j, m_j, cv, V, H * V, i_h * V)
            if GV:
                dv_j += _diag_gmmT(A, do, 1.0, gvr, base_j, L, bos, eos, cv, V, H, i_h, BS, BV, False, False, REVERSE)
            else:
                dv_j += _mm(tl.trans(A.to(DT)), do_j.to(DT), IEEE)
            store_tile(dv, dv_j, r_j, m_j, cv, V, H * V, i_h * V)
            if GV:
                o_j = load_tile(o, r_j, m_j, cv, V, H * V, i_h * V)
                v_j = load_tile(v, r_j, m_j, cv, V, H * V, i_h * V)
                store_tile(dbv, o_j * do_j - v_j * (dv_j - dv_last), r_j, m_j, cv, V, H * V, i_h * V)


@triton.jit
def _bwd_diag_dA(do_m, v_m, v, gvr, base_m, t_m, m_m, L, bos, eos, cv, V, H, i_h,
                 BS: tl.constexpr, GV: tl.constexpr, USE_U: tl.constexpr, REVERSE: tl.constexpr,
                 IEEE: tl.constexpr, DT: tl.constexpr):
    """dL/dA of a diagonal sub-block: dA[t, s] = do_t . v_s (value gates between s and t applied) for s <= t
    (s < t in the bonus form, where the diagonal is the bonus term)."""
    if GV:
        dA = _diag_scores(do_m, tl.zeros_like(do_m), v, gvr, base_m, t_m, m_m, L, bos, eos, cv, V, H, i_h, BS,
                          USE_U, REVERSE)
    else:
        dA = _mm(do_m.to(DT), tl.trans(v_m.to(DT)), IEEE)
        if USE_U:
            dA = tl.where((t_m[:, None] > t_m[None, :]) & m_m[:, None], dA, 0.)
        else:
            dA = tl.where((t_m[:, None] >= t_m[None, :]) & m_m[:, None], dA, 0.)
    return dA


# dq and dk: two kernels, each walking the sub-blocks of one chunk. Dynamic loops (not unrolled) keep one
# sub-block's tiles live at a time; tiles needed only at the end of a sub-block are loaded there. Each term (inter-
# chunk, off-diagonal sub-blocks, diagonal) has a loop over V blocks of its own, on purpose: Triton picks the warp
# layout of a tl.dot from the dots connected to it *within one region*; in one shared loop body the [BS, BS]
# diagonal dot pulled the [BS, BK] @ [BK, BV] state dot onto warpsPerCTA [4, 1], where with BS = 16 rows every warp
# computes the whole product and holds the whole fp32 state tile (128 registers per thread). The former single
# dq/dk kernel (both state tiles so) spilled ~2.5 KB per thread on sm_90 with per-dimension gates; these two kernels
# compile without spills (bf16, K = V = 64, num_warps 4).
@triton.jit
def _bwd_dq_kernel(q, k, v, gkb, gkr, gvb, gvr, u, h, do, dq, dbk, dbq, cu, chunk_seq, chunk_idx,
                   scale, N, NT, H, K, V,
                   C: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   GK: tl.constexpr, GV: tl.constexpr, USE_U: tl.constexpr, REVERSE: tl.constexpr,
                   VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    """dq, and the query half of the key-gate gradient, q * dq (fp32), into dbk (and dbq with the bonus):
    inter-chunk term from h, earlier sub-blocks j < mb, diagonal sub-block."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    ck = tl.arange(0, BK)
    ar = tl.arange(0, BS)
    for mb in range(C // BS):
        base_m = i_t * C + mb * BS
        if base_m < L:
            t_m = base_m + ar
            m_m = t_m < L
            r_m = phys_row(t_m, bos, eos, REVERSE)
            r_refm = phys_row(tl.maximum(base_m - 1, 0), bos, eos, REVERSE)
            dq_t = tl.zeros([BS, BK], dtype=tl.float32)
            dov = tl.zeros([BS], dtype=tl.float32)
            dA_tt = tl.zeros([BS], dtype=tl.float32)
            # inter-chunk term: (do_t exp(bv_t)) @ h^T, times exp(b_t) (b_t: chunk prefix; exclusive with the bonus)
            for iv in range(tl.cdiv(V, BV)):
                cv = iv * BV + tl.arange(0, BV)
                hs = _state_tile(h, hc, H, i_h, ck, cv, K, V)
                dd = load_tile(do, r_m, m_m, cv, V, H * V, i_h * V)
                if GV:
                    dd = dd * tl.exp(load_tile(gvb, r_m, m_m, cv, V, H * V, i_h * V))
                dq_t += _mm(dd.to(DT), tl.trans(hs.to(DT)), IEEE)
            if GK > 0:
                bq_m = _gtile(gkb, r_m, m_m, ck, K, H, i_h, GK)
                if USE_U:
                    bq_m = bq_m - _gtile(gkr, r_m, m_m, ck, K, H, i_h, GK)
                dq_t = dq_t * tl.exp(bq_m)
            # earlier sub-blocks j < mb (reference row: last row of sub-block mb-1)
            if mb > 0:
                for iv in range(tl.cdiv(V, BV)):
                    cv = iv * BV + tl.arange(0, BV)
                    do_m = load_tile(do, r_m, m_m, cv, V, H * V, i_h * V)
                    if GV:
                        ddr = do_m * tl.exp(tl.where(m_m[:, None],
                                                     _lpre(load_tile(gvr, r_m, m_m, cv, V, H * V, i_h * V), False, 2, BS),
                                                     NEG_INF))
                        bv_rm = load_row(gvb, r_refm, cv, V, H * V, i_h * V)[None, :]
                    else:
                        ddr = do_m
                    if GK > 0:
                        bk_rm = _grow(gkb, r_refm, ck, K, H, i_h, GK)
                    else:
                        bk_rm = 0.
                    dq_off = tl.zeros([BS, BK], dtype=tl.float32)
                    for j in range(mb):
                        t_j = i_t * C + j * BS + ar
                        m_j = t_j < L
                        r_j = phys_row(t_j, bos, eos, REVERSE)
                        v_j = load_tile(v, r_j, m_j, cv, V, H * V, i_h * V)
                        if GV:
                            v_j = _to_ref(v_j, gvr, gvb, bv_rm, r_j, m_j, j == mb - 1, cv, V, H, i_h, 2, BS)
                        dA = _mm(ddr.to(DT), tl.trans(v_j.to(DT)), IEEE)
                        k_j = _to_ref(load_tile(k, r_j, m_j, ck, K, H * K, i_h * K), gkr, gkb, bk_rm, r_j, m_j,
                                      j == mb - 1, ck, K, H, i_h, GK, BS)
                        dq_off += _mm(dA.to(DT), k_j.to(DT), IEEE)
                    if GK > 0:
                        g_m = _gtile(gkr, r_m, m_m, ck, K, H, i_h, GK)
                        dq_t += dq_off * tl.exp(tl.where(m_m[:, None], _lpre(g_m, USE_U, GK, BS), NEG_INF))
                    else:
                        dq_t += dq_off
            # diagonal sub-block
            for iv in range(tl.cdiv(V, BV)):
                cv = iv * BV + tl.arange(0, BV)
                do_m = load_tile(do, r_m, m_m, cv, V, H * V, i_h * V)
                v_m = load_tile(v, r_m, m_m, cv, V, H * V, i_h * V)
                dA = _bwd_diag_dA(do_m, v_m, v, gvr, base_m, t_m, m_m, L, bos, eos, cv, V, H, i_h, BS, GV, USE_U,
                                  REVERSE, IEEE, DT)
                if USE_U:
                    dov += tl.sum(do_m * v_m, axis=1)
                else:
                    # the t == s terms (gate factor exp(0)) cancel exactly in q*dq - k*dk: added after the gate
                    # gradient is taken (here and in _bwd_dk_kernel)
                    dA_tt += tl.sum(tl.where(ar[:, None] == ar[None, :], dA, 0.), axis=1)
                if GK == 2:
                    if USE_U:
                        gT = _gtile(gkr, r_m, m_m, ck, K, H, i_h, GK)
                    else:
                        gT = tl.zeros([BS, BK], dtype=tl.float32)
                    dq_t += _diag_gmm(dA, gT, k, gkr, base_m, t_m, m_m, L, bos, eos, ck, K, H, i_h, BS, BK, True,
                                      REVERSE)
                else:
                    if GK == 1:
                        dA = dA * _diag_decay(_gvec(gkr, r_m, m_m, H, i_h), t_m, m_m, BS, USE_U, True)
                    else:
                        dA = tl.where((t_m[:, None] > t_m[None, :]) & m_m[:, None], dA, 0.)
                    k_m = load_tile(k, r_m, m_m, ck, K, H * K, i_h * K)
                    dq_t += _mm(dA.to(DT), k_m.to(DT), IEEE)
            if GK > 0:
                dbq_t = load_tile(q, r_m, m_m, ck, K, H * K, i_h * K) * scale * dq_t
                if GK == 2:
                    store_tile(dbk, dbq_t, r_m, m_m, ck, K, H * K, i_h * K)
                    if USE_U:
                        store_tile(dbq, dbq_t, r_m, m_m, ck, K, H * K, i_h * K)
                else:
                    tl.store(dbk + r_m.to(tl.int64) * H + i_h, tl.sum(dbq_t, axis=1), mask=m_m)
                    if USE_U:
                        tl.store(dbq + r_m.to(tl.int64) * H + i_h, tl.sum(dbq_t, axis=1), mask=m_m)
            dq_t += _diag_self_term(dov, dA_tt, load_tile(k, r_m, m_m, ck, K, H * K, i_h * K), u, i_h, ck, K, USE_U)
            store_tile(dq, dq_t * scale, r_m, m_m, ck, K, H * K, i_h * K)


@triton.jit
def _bwd_dk_kernel(q, k, v, gkb, gkr, gks, gvb, gvr, gvs, u, do, dh, dk, dbk, cu, chunk_seq, chunk_idx,
                   scale, N, NT, H, K, V,
                   C: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   GK: tl.constexpr, GV: tl.constexpr, USE_U: tl.constexpr, REVERSE: tl.constexpr,
                   VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    """dk: inter-chunk term from dh, later sub-blocks i > mb, diagonal sub-block; and the key-gate gradient
    db = q * dq - k * dk, completing dbk, which holds q * dq from _bwd_dq_kernel (launched before)."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    ck = tl.arange(0, BK)
    ar = tl.arange(0, BS)
    for mb in range(C // BS):
        base_m = i_t * C + mb * BS
        if base_m < L:
            t_m = base_m + ar
            m_m = t_m < L
            r_m = phys_row(t_m, bos, eos, REVERSE)
            dk_t = tl.zeros([BS, BK], dtype=tl.float32)
            dov = tl.zeros([BS], dtype=tl.float32)
            dA_tt = tl.zeros([BS], dtype=tl.float32)
            # inter-chunk term: (v_s exp(bv_last - bv_s)) @ dh^T, times exp(b_last - b_s)
            for iv in range(tl.cdiv(V, BV)):
                cv = iv * BV + tl.arange(0, BV)
                dhs = _state_tile(dh, hc, H, i_h, ck, cv, K, V)
                vv = load_tile(v, r_m, m_m, cv, V, H * V, i_h * V)
                if GV:
                    vv = vv * tl.exp(tl.where(m_m[:, None], load_tile(gvs, r_m, m_m, cv, V, H * V, i_h * V), NEG_INF))
                dk_t += _mm(vv.to(DT), tl.trans(dhs.to(DT)), IEEE)
            if GK > 0:
                # the last token's final-state path, kept out of the gate gradient (added to dk at the end)
                dk_last = tl.where((t_m == L - 1)[:, None], dk_t, 0.)
                dk_t = dk_t * tl.exp(tl.where(m_m[:, None] & (t_m != L - 1)[:, None],
                                              _gtile(gks, r_m, m_m, ck, K, H, i_h, GK), NEG_INF))
            # later sub-blocks i > mb (reference row: last row of sub-block i-1)
            for iv in range(tl.cdiv(V, BV)):
                cv = iv * BV + tl.arange(0, BV)
                v_m = load_tile(v, r_m, m_m, cv, V, H * V, i_h * V)
                for i in range(mb + 1, C // BS):
                    base_i = i_t * C + i * BS
                    if base_i < L:
                        t_i = base_i + ar
                        m_i = t_i < L
                        r_i = phys_row(t_i, bos, eos, REVERSE)
                        r_ref = phys_row(base_i - 1, bos, eos, REVERSE)
                        do_i = load_tile(do, r_i, m_i, cv, V, H * V, i_h * V)
                        if GV:
                            do_i = do_i * tl.exp(tl.where(m_i[:, None],
                                                          _lpre(load_tile(gvr, r_i, m_i, cv, V, H * V, i_h * V), False, 2,
                                                                BS), NEG_INF))
                            if i == mb + 1:
                                vr = v_m * tl.exp(_lsuf(load_tile(gvr, r_m, m_m, cv, V, H * V, i_h * V), 2, BS))
                            else:
                                vr = v_m * tl.exp(load_row(gvb, r_ref, cv, V, H * V, i_h * V)[None, :]
                                                  - load_tile(gvb, r_m, m_m, cv, V, H * V, i_h * V))
                        else:
                            vr = v_m
                        dA = _mm(do_i.to(DT), tl.trans(vr.to(DT)), IEEE)
                        q_i = load_tile(q, r_i, m_i, ck, K, H * K, i_h * K) * scale
                        if GK > 0:
                            q_i = q_i * tl.exp(tl.where(m_i[:, None],
                                                        _lpre(_gtile(gkr, r_i, m_i, ck, K, H, i_h, GK), USE_U, GK, BS),
                                                        NEG_INF))
                            if i == mb + 1:
                                fk = tl.exp(_lsuf(_gtile(gkr, r_m, m_m, ck, K, H, i_h, GK), GK, BS))
                            else:
                                fk = tl.exp(_grow(gkb, r_ref, ck, K, H, i_h, GK)
                                            - _gtile(gkb, r_m, m_m, ck, K, H, i_h, GK))
                            dk_t += fk * _mm(tl.trans(dA.to(DT)), q_i.to(DT), IEEE)
                        else:
                            dk_t += _mm(tl.trans(dA.to(DT)), q_i.to(DT), IEEE)
            # diagonal sub-block
            for iv in range(tl.cdiv(V, BV)):
                cv = iv * BV + tl.arange(0, BV)
                do_m = load_tile(do, r_m, m_m, cv, V, H * V, i_h * V)
                v_m = load_tile(v, r_m, m_m, cv, V, H * V, i_h * V)
                dA = _bwd_diag_dA(do_m, v_m, v, gvr, base_m, t_m, m_m, L, bos, eos, cv, V, H, i_h, BS, GV, USE_U,
                                  REVERSE, IEEE, DT)
                if USE_U:
                    dov += tl.sum(do_m * v_m, axis=1)
                else:
                    dA_tt += tl.sum(tl.where(ar[:, None] == ar[None, :], dA, 0.), axis=1)
                if GK == 2:
                    dk_t += _diag_gmmT(dA, q, scale, gkr, base_m, L, bos, eos, ck, K, H, i_h, BS, BK, True, USE_U,
                                       REVERSE)
                else:
                    if GK == 1:
                        dA = dA * _diag_decay(_gvec(gkr, r_m, m_m, H, i_h), t_m, m_m, BS, USE_U, True)
                    else:
                        dA = tl.where((t_m[:, None] > t_m[None, :]) & m_m[:, None], dA, 0.)
                    q_m = load_tile(q, r_m, m_m, ck, K, H * K, i_h * K) * scale
                    dk_t += _mm(tl.trans(dA.to(DT)), q_m.to(DT), IEEE)
            if GK > 0:
                kdk = load_tile(k, r_m, m_m, ck, K, H * K, i_h * K) * dk_t
                if GK == 2:
                    db_t = load_tile(dbk, r_m, m_m, ck, K, H * K, i_h * K) - kdk
                    store_tile(dbk, db_t, r_m, m_m, ck, K, H * K, i_h * K)
                else:
                    db_t = _gvec(dbk, r_m, m_m, H, i_h) - tl.sum(kdk, axis=1)
                    tl.store(dbk + r_m.to(tl.int64) * H + i_h, db_t, mask=m_m)
                dk_t += dk_last
            q_m = load_tile(q, r_m, m_m, ck, K, H * K, i_h * K) * scale
            dk_t += _diag_self_term(dov, dA_tt, q_m, u, i_h, ck, K, USE_U)
            store_tile(dk, dk_t, r_m, m_m, ck, K, H * K, i_h * K)


# ----------------------------------------------------------------------------------------------------------
# intra-chunk matrix path (no value gates): the intra-chunk scores A (forward) and their gradient dA (backward)
# are formed once per chunk and stored (fp32 [B, N, H, C], row = physical row of t, column = logical offset of s
# in the chunk); the output, dv and the inter-chunk dq/dk terms are then full-chunk matmuls. Only two kernels
# walk sub-blocks: _fwd_A_kernel (A) and _bwd_intra_kernel (the intra-chunk dq/dk from dA). Each keeps the
# sub-block scheme above (reference rows, exponents <= 0, exact diagonal sub-blocks); the full-chunk kernels hold
# only [C, *] x [*, *] dots, the sub-block kernels only [BS, *] ones (no mixed dot sizes in one kernel).
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _fwd_A_kernel(q, k, gkb, gkr, u, A, cu, chunk_seq, chunk_idx, scale, N, NT, H, K,
                  C: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, GK: tl.constexpr, USE_U: tl.constexpr,
                  REVERSE: tl.constexpr, VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    """Rows of sub-block program_id(0) of A[t, s] = scale * sum_k q_tk k_sk exp(bq_tk - b_sk) for s <= t (bq = b),
    with the bonus for s < t (bq = b - g: exclusive prefix) and A[t, t] = scale * q_t . (u * k_t); zero above."""
    i_i, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    ck = tl.arange(0, BK)
    ar = tl.arange(0, BS)
    base = i_t * C + i_i * BS
    if base < L:
        t_i = base + ar
        m_i = t_i < L
        r_i = phys_row(t_i, bos, eos, REVERSE)
        q_i = load_tile(q, r_i, m_i, ck, K, H * K, i_h * K) * scale
        k_i = load_tile(k, r_i, m_i, ck, K, H * K, i_h * K)
        if GK > 0:
            g_i = _gtile(gkr, r_i, m_i, ck, K, H, i_h, GK)
        else:
            g_i = 0.  # unused
        # earlier sub-blocks j < i: reference row r = last row of sub-block i-1, both factors <= 1
        if i_i > 0:
            r_ref = phys_row(base - 1, bos, eos, REVERSE)
            if GK > 0:
                qr = q_i * tl.exp(tl.where(m_i[:, None], _lpre(g_i, USE_U, GK, BS), NEG_INF))
                bk_r = _grow(gkb, r_ref, ck, K, H, i_h, GK)
            else:
                qr = q_i
                bk_r = 0.
            for j in range(i_i):
                t_j = i_t * C + j * BS + ar
                m_j = t_j < L
                r_j = phys_row(t_j, bos, eos, REVERSE)
                k_j = _to_ref(load_tile(k, r_j, m_j, ck, K, H * K, i_h * K), gkr, gkb, bk_r, r_j, m_j, j == i_i - 1,
                              ck, K, H, i_h, GK, BS)
                A_ij = _mm(qr.to(DT), tl.trans(k_j.to(DT)), IEEE)
                store_tile(A, A_ij, r_i, m_i, j * BS + ar, C, H * C, i_h * C)
        # diagonal sub-block (exact)
        if USE_U:
            uu = tl.load(u + i_h * K + ck, mask=ck < K, other=0.).to(tl.float32)
        else:
            uu = 0.  # unused
        A_ii = _diag_block_scores(q_i, k_i, g_i, uu, k, gkr, base, t_i, m_i, r_i, L, bos, eos, ck, K, H, i_h,
                                  BS, GK, USE_U, REVERSE, DT, IEEE)
        store_tile(A, A_ii, r_i, m_i, i_i * BS + ar, C, H * C, i_h * C)
        for j in range(i_i + 1, C // BS):
            store_tile(A, tl.zeros([BS, BS], dtype=tl.float32), r_i, m_i, j * BS + ar, C, H * C, i_h * C)


@triton.jit
def _fwd_oA_kernel(q, v, gkb, gkr, h, A, o, cu, chunk_seq, chunk_idx, scale, N, NT, H, K, V,
                   C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GK: tl.constexpr, USE_U: tl.constexpr,
                   REVERSE: tl.constexpr, VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    """o = scale * (q * exp(bq)) @ S_chunk_start + A @ v, one chunk (all C rows) per program."""
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    ac = tl.arange(0, C)
    t = i_t * C + ac
    m = t < L
    r = phys_row(t, bos, eos, REVERSE)
    cv = i_v * BV + tl.arange(0, BV)
    b_o = tl.zeros([C, BV], dtype=tl.float32)
    for ik in range(tl.cdiv(K, BK)):
        ck = ik * BK + tl.arange(0, BK)
        qe = load_tile(q, r, m, ck, K, H * K, i_h * K) * scale
        if GK > 0:
            bq = _gtile(gkb, r, m, ck, K, H, i_h, GK)
            if USE_U:
                bq = bq - _gtile(gkr, r, m, ck, K, H, i_h, GK)
            qe = qe * tl.exp(bq)
        b_o += _mm(qe.to(DT), _state_tile(h, hc, H, i_h, ck, cv, K, V).to(DT), IEEE)
    a = load_tile(A, r, m, ac, C, H * C, i_h * C)
    b_o += _mm(a.to(DT), load_tile(v, r, m, cv, V, H * V, i_h * V).to(DT), IEEE)
    store_tile(o, b_o, r, m, cv, V, H * V, i_h * V)


@triton.jit
def _bwd_dA_kernel(v, do, dA, cu, chunk_seq, chunk_idx, scale, N, NT, H, V,
                   C: tl.constexpr, BV: tl.constexpr, REVERSE: tl.constexpr, VARLEN: tl.constexpr,
                   IEEE: tl.constexpr, LOWP: tl.constexpr):
    """dA[t, s] = scale * do_t . v_s for s <= t, zero above (fp32 [B, N, H, C], laid out as A)."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = v.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    ac = tl.arange(0, C)
    t = i_t * C + ac
    m = t < L
    r = phys_row(t, bos, eos, REVERSE)
    acc = tl.zeros([C, C], dtype=tl.float32)
    for iv in range(tl.cdiv(V, BV)):
        cv = iv * BV + tl.arange(0, BV)
        acc += _mm(load_tile(do, r, m, cv, V, H * V, i_h * V).to(DT),
                   tl.trans(load_tile(v, r, m, cv, V, H * V, i_h * V).to(DT)), IEEE)
    acc = tl.where(ac[None, :] <= ac[:, None], acc * scale, 0.)
    store_tile(dA, acc, r, m, ac, C, H * C, i_h * C)


@triton.jit
def _bwd_dvA_kernel(k, gks, A, do, dh, dv, cu, chunk_seq, chunk_idx, N, NT, H, K, V,
                    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GK: tl.constexpr, REVERSE: tl.constexpr,
                    VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    """dv = A^T @ do + (k * exp(b_last - b)) @ dh, one chunk per program."""
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = k.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    ac = tl.arange(0, C)
    t = i_t * C + ac
    m = t < L
    r = phys_row(t, bos, eos, REVERSE)
    cv = i_v * BV + tl.arange(0, BV)
    b_dv = tl.zeros([C, BV], dtype=tl.float32)
    for ik in range(tl.cdiv(K, BK)):
        ck = ik * BK + tl.arange(0, BK)
        ke = load_tile(k, r, m, ck, K, H * K, i_h * K)
        if GK > 0:
            ke = ke * tl.exp(tl.where(m[:, None], _gtile(gks, r, m, ck, K, H, i_h, GK), NEG_INF))
        b_dv += _mm(ke.to(DT), _state_tile(dh, hc, H, i_h, ck, cv, K, V).to(DT), IEEE)
    a = load_tile(A, r, m, ac, C, H * C, i_h * C)
    b_dv += _mm(tl.trans(a.to(DT)), load_tile(do, r, m, cv, V, H * V, i_h * V).to(DT), IEEE)
    store_tile(dv, b_dv, r, m, cv, V, H * V, i_h * V)


@triton.jit
def _bwd_intra_kernel(q, k, gkb, gkr, dA, dqi, dki, cu, chunk_seq, chunk_idx, N, NT, H, K,
                      C: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, GK: tl.constexpr, USE_U: tl.constexpr,
                      REVERSE: tl.constexpr, VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    """Intra-chunk dq and dk of sub-block program_id(0) % (C // BS), key block program_id(0) // (C // BS), from dA,
    strict pairs only (s < t; the t == s terms are added by _bwd_inter_kernel), fp32:
    dq_t = sum_{s<t} dA[t, s] k_s exp(bq_t - b_s),  dk_s = sum_{t>s} dA[t, s] q_t exp(bq_t - b_s)."""
    i_ki, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    NS: tl.constexpr = C // BS
    i_k = i_ki // NS
    i_i = i_ki % NS
    L = eos - bos
    ck = i_k * BK + tl.arange(0, BK)
    ar = tl.arange(0, BS)
    base = i_t * C + i_i * BS
    if base < L:
        t_i = base + ar
        m_i = t_i < L
        r_i = phys_row(t_i, bos, eos, REVERSE)
        ci = i_i * BS + ar
        if GK > 0:
            g_i = _gtile(gkr, r_i, m_i, ck, K, H, i_h, GK)
        # dq from earlier sub-blocks j < i (reference row: last row of sub-block i-1)
        dq_i = tl.zeros([BS, BK], dtype=tl.float32)
        if i_i > 0:
            r_ref = phys_row(base - 1, bos, eos, REVERSE)
            if GK > 0:
                bk_r = _grow(gkb, r_ref, ck, K, H, i_h, GK)
            else:
                bk_r = 0.
            for j in range(i_i):
                t_j = i_t * C + j * BS + ar
                m_j = t_j < L
                r_j = phys_row(t_j, bos, eos, REVERSE)
                k_j = _to_ref(load_tile(k, r_j, m_j, ck, K, H * K, i_h * K), gkr, gkb, bk_r, r_j, m_j, j == i_i - 1,
                              ck, K, H, i_h, GK, BS)
                dA_ij = load_tile(dA, r_i, m_i, j * BS + ar, C, H * C, i_h * C)
                dq_i += _mm(dA_ij.to(DT), k_j.to(DT), IEEE)
            if GK > 0:
                dq_i = dq_i * tl.exp(tl.where(m_i[:, None], _lpre(g_i, USE_U, GK, BS), NEG_INF))
        # dk from later sub-blocks j > i (reference row: last row of sub-block j-1)
        dk_i = tl.zeros([BS, BK], dtype=tl.float32)
        for j in range(i_i + 1, NS):
            base_j = i_t * C + j * BS
            if base_j < L:
                t_j = base_j + ar
                m_j = t_j < L
                r_j = phys_row(t_j, bos, eos, REVERSE)
                q_j = load_tile(q, r_j, m_j, ck, K, H * K, i_h * K)
                dA_ji = load_tile(dA, r_j, m_j, ci, C, H * C, i_h * C)
                if GK > 0:
                    q_j = q_j * tl.exp(tl.where(m_j[:, None],
                                                _lpre(_gtile(gkr, r_j, m_j, ck, K, H, i_h, GK), USE_U, GK, BS),
                                                NEG_INF))
                    if j == i_i + 1:
                        fk = tl.exp(_lsuf(g_i, GK, BS))
                    else:
                        fk = tl.exp(_grow(gkb, phys_row(base_j - 1, bos, eos, REVERSE), ck, K, H, i_h, GK)
                                    - _gtile(gkb, r_i, m_i, ck, K, H, i_h, GK))
                    dk_i += fk * _mm(tl.trans(dA_ji.to(DT)), q_j.to(DT), IEEE)
                else:
                    dk_i += _mm(tl.trans(dA_ji.to(DT)), q_j.to(DT), IEEE)
        # diagonal sub-block (exact), strict pairs
        dA_ii = load_tile(dA, r_i, m_i, ci, C, H * C, i_h * C)
        if GK == 2:
            if USE_U:
                gT = g_i
            else:
                gT = tl.zeros([BS, BK], dtype=tl.float32)
            dq_i += _diag_gmm(dA_ii, gT, k, gkr, base, t_i, m_i, L, bos, eos, ck, K, H, i_h, BS, BK, True, REVERSE)
            dk_i += _diag_gmmT(dA_ii, q, 1.0, gkr, base, L, bos, eos, ck, K, H, i_h, BS, BK, True, USE_U, REVERSE)
        else:
            if GK == 1:
                dA_ii = dA_ii * _diag_decay(_gvec(gkr, r_i, m_i, H, i_h), t_i, m_i, BS, USE_U, True)
            else:
                dA_ii = tl.where((t_i[:, None] > t_i[None, :]) & m_i[:, None], dA_ii, 0.)
            dq_i += _mm(dA_ii.to(DT), load_tile(k, r_i, m_i, ck, K, H * K, i_h * K).to(DT), IEEE)
            dk_i += _mm(tl.trans(dA_ii.to(DT)), load_tile(q, r_i, m_i, ck, K, H * K, i_h * K).to(DT), IEEE)
        store_tile(dqi, dq_i, r_i, m_i, ck, K, H * K, i_h * K)
        store_tile(dki, dk_i, r_i, m_i, ck, K, H * K, i_h * K)


@triton.jit
def _bwd_inter_kernel(q, k, v, gkb, gkr, gks, u, h, do, dh, dA, dqi, dki, dq, dk, dbk, dbq,
                      cu, chunk_seq, chunk_idx, scale, N, NT, H, K, V,
                      C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GK: tl.constexpr, USE_U: tl.constexpr,
                      REVERSE: tl.constexpr, VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    """dq = scale * (do @ h^T) * exp(bq) + intra, dk = (v @ dh^T) * exp(b_last - b) + intra, one chunk and key
    block per program; the key-gate gradient q * dq - k * dk into dbk (q * dq also into dbq with the bonus), without
    the t == s terms and the last token's final-state path, which are added to dq / dk afterwards."""
    i_k, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    ac = tl.arange(0, C)
    t = i_t * C + ac
    m = t < L
    r = phys_row(t, bos, eos, REVERSE)
    ck = i_k * BK + tl.arange(0, BK)
    dq_c = tl.zeros([C, BK], dtype=tl.float32)
    dk_c = tl.zeros([C, BK], dtype=tl.float32)
    for iv in range(tl.cdiv(V, BV)):
        cv = iv * BV + tl.arange(0, BV)
        dq_c += _mm(load_tile(do, r, m, cv, V, H * V, i_h * V).to(DT),
                    tl.trans(_state_tile(h, hc, H, i_h, ck, cv, K, V).to(DT)), IEEE)
        dk_c += _mm(load_tile(v, r, m, cv, V, H * V, i_h * V).to(DT),
                    tl.trans(_state_tile(dh, hc, H, i_h, ck, cv, K, V).to(DT)), IEEE)
    dq_c = dq_c * scale
    if GK > 0:
        bq = _gtile(gkb, r, m, ck, K, H, i_h, GK)
        if USE_U:
            bq = bq - _gtile(gkr, r, m, ck, K, H, i_h, GK)
        dq_c = dq_c * tl.exp(bq)
        # the last token's final-state path, kept out of the gate gradient (added to dk below)
        dk_last = tl.where((t == L - 1)[:, None], dk_c, 0.)
        dk_c = dk_c * tl.exp(tl.where(m[:, None] & (t != L - 1)[:, None], _gtile(gks, r, m, ck, K, H, i_h, GK),
                                      NEG_INF))
    dq_c += load_tile(dqi, r, m, ck, K, H * K, i_h * K)
    dk_c += load_tile(dki, r, m, ck, K, H * K, i_h * K)
    q_c = load_tile(q, r, m, ck, K, H * K, i_h * K)
    k_c = load_tile(k, r, m, ck, K, H * K, i_h * K)
    if GK > 0:
        qdq = q_c * dq_c
        if GK == 2:
            store_tile(dbk, qdq - k_c * dk_c, r, m, ck, K, H * K, i_h * K)
            if USE_U:
                store_tile(dbq, qdq, r, m, ck, K, H * K, i_h * K)
        else:
            tl.store(dbk + r.to(tl.int64) * H + i_h, tl.sum(qdq - k_c * dk_c, axis=1), mask=m)
            if USE_U:
                tl.store(dbq + r.to(tl.int64) * H + i_h, tl.sum(qdq, axis=1), mask=m)
        dk_c += dk_last
    # t == s terms: dA[t, t] (scale * do_t . v_t) times k_t / q_t, or u * k_t / u * q_t with the bonus
    dA_tt = tl.load(dA + r.to(tl.int64) * H * C + i_h * C + ac, mask=m, other=0.)
    dq_c += _diag_self_term(dA_tt, dA_tt, k_c, u, i_h, ck, K, USE_U)
    dk_c += _diag_self_term(dA_tt, dA_tt, q_c, u, i_h, ck, K, USE_U)
    store_tile(dq, dq_c, r, m, ck, K, H * K, i_h * K)
    store_tile(dk, dk_c, r, m, ck, K, H * K, i_h * K)


# ----------------------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------------------
def _use_A(gv):
    return current_options().gla_a_path and gv is None


def _or(t, dummy):
    return t if t is not None else dummy


def _lowp(ieee):
    # Triton's CPU interpreter (3.8) computes bf16 tl.dot wrongly: there, dots run in fp32
    return (not ieee) and os.environ.get('TRITON_INTERPRET', '0') in ('', '0')


def _prec(ieee):
    """IEEE code of the kernels: 1 for fp32 inputs; for 16-bit inputs, where a kernel takes fp32 operands,
    0 (tf32) or 2 (3xtf32) after the option ``gla_f32_operands``."""
    return 1 if ieee else (2 if current_options().gla_f32_operands == 'tf32x3' else 0)


def _pow2(x, lo=16):
    return max(lo, triton.next_power_of_2(x))


def _state_blocks(K, V, nprog):
    """State tiles of the two sequential kernels: smaller tiles when few (sequence, head) pairs would leave
    most of the GPU idle (one program walks all chunks of its tile)."""
    BK, BV = min(64, _pow2(K)), min(64, _pow2(V))
    while nprog * triton.cdiv(K, BK) * triton.cdiv(V, BV) < 264 and max(BK, BV) > 32:
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


def _revcumsum(x, meta, reverse):
    scalar = x.dim() == 3
    D = 1 if scalar else x.shape[-1]
    BD = 1 if scalar else min(64, _pow2(D))
    out = alloc(x.shape, x.dtype, x.device)
    grid = (1 if scalar else triton.cdiv(D, BD), meta.nseq * meta.H)
    _revcumsum_kernel[grid](x, out, meta.cu, meta.chunk_off, meta.N, meta.NT, meta.H, D, C=meta.C, BD=BD,
                            SCALAR=scalar, REVERSE=reverse, VARLEN=meta.varlen)
    return out


def _fwd_h(k, v, gkb, gks, gvb, gvs, h0, store_ht, meta, GK, reverse, ieee, lowp=None):
    K, V = k.shape[-1], v.shape[-1]
    H = meta.H
    BKh, BVh = _state_blocks(K, V, meta.nseq * H)
    h = alloc((meta.total_chunks, H, K, V), torch.float32, k.device)
    ht = alloc((meta.nseq, H, K, V), torch.float32, k.device) if store_ht else h
    ht_ex = alloc((meta.nseq, H, K, V), torch.float32, k.device) if store_ht else h
    grid = (triton.cdiv(K, BKh), triton.cdiv(V, BVh), meta.nseq * H)
    _fwd_h_kernel[grid](k, v, _or(gkb, k), _or(gks, k), _or(gvb, v), _or(gvs, v), h,
                        h0 if h0 is not None else h, ht, ht_ex, meta.cu, meta.chunk_off, meta.N, meta.NT, H, K, V,
                        C=meta.C, BK=BKh, BV=BVh, GK=GK, GV=gvb is not None, USE_H0=h0 is not None,
                        STORE_HT=store_ht, REVERSE=reverse, VARLEN=meta.varlen, IEEE=_prec(ieee),
                        LOWP=_lowp(ieee) if lowp is None else lowp)
    return h, (ht if store_ht else None), (ht_ex if store_ht else None)


def _launch_opts(K, *names):
    """Launch options of a kernel; ``kernel_options(launch=...)`` entries of ``names`` override in order ('dqk'
    applies to both the dq and the dk kernel, 'dq' / 'dk' to one)."""
    opts = dict(num_warps=4) if K <= 64 else dict(num_warps=8)
    if 'fwd_A' in names and K <= 64:
        # 2 warps: faster on the H100 (docs/benchmarks/recurrent_gla.md); offline sm_90a ptxas at K = 64, bf16:
        # no spills with or without the bonus and for every gate kind
        opts['num_warps'] = 2
    if 'fwd_o' in names:
        opts['num_stages'] = 1  # faster than 2 stages on the H100 (docs/benchmarks/recurrent_gla.md)
    if any(n in names for n in ('fwd_oA', 'dA', 'dvA', 'inter')):
        # full-chunk kernels: their K / V loops run once at K = V <= 64, so stages only cost shared memory;
        # _bwd_inter_kernel (bf16, K = V = 64, 4 warps, sm_90a) spills with 3 stages, not with 1
        opts['num_stages'] = 1
    opts.update(current_options().launch_for(*names))
    return opts


def gla_fwd(q, k, v, gk, gv, u, scale, h0, output_final_state, meta, reverse):
    K, V = q.shape[-1], v.shape[-1]
    GK = 0 if gk is None else (1 if gk.dim() == 3 else 2)
    ieee = q.dtype == torch.float32
    gkb, gks = _gate_cumsum(gk, meta, reverse)
    gvb, gvs = _gate_cumsum(gv, meta, reverse)
    # value gates: dL/dgv = o * do - v * dv cancels, and o comes from this pass: it must be computed with the
    # backward's operand precision, or the two roundings do not cancel (GSA bf16 dg 3e-2 on the H100)
    lowp = _lowp(ieee) and (gv is None or not current_options().gla_bwd_fp32)
    h, ht, ht_ex = _fwd_h(k, v, gkb, gks, gvb, gvs, h0, output_final_state, meta, GK, reverse, ieee, lowp=lowp)
    if _use_A(gv):
        # intra-chunk scores once (A, fp32, kept for the backward's dv), then full-chunk matmuls
        A = alloc((*q.shape[:3], meta.C), torch.float32, q.device)
        _fwd_A_kernel[(meta.C // SUB, meta.nchunks, meta.nbh)](
            q, k, _or(gkb, q), _or(gk, q), _or(u, q), A, meta.cu, meta.chunk_seq, meta.chunk_idx, scale, meta.N,
            meta.NT, meta.H, K, C=meta.C, BS=SUB, BK=_pow2(K), GK=GK, USE_U=u is not None, REVERSE=reverse,
            VARLEN=meta.varlen, IEEE=_prec(ieee), LOWP=lowp, **_launch_opts(K, 'fwd_A'))
        o = alloc(v.shape, v.dtype, v.device)
        BK, BV = min(64, _pow2(K)), min(64, _pow2(V))
        _fwd_oA_kernel[(triton.cdiv(V, BV), meta.nchunks, meta.nbh)](
            q, v, _or(gkb, q), _or(gk, q), h, A, o, meta.cu, meta.chunk_seq, meta.chunk_idx, scale, meta.N, meta.NT,
            meta.H, K, V, C=meta.C, BK=BK, BV=BV, GK=GK, USE_U=u is not None, REVERSE=reverse, VARLEN=meta.varlen,
            IEEE=_prec(ieee), LOWP=lowp, **_launch_opts(K, 'fwd_oA'))
        return o, ht, ht_ex, A, (gkb, gks, gvb, gvs)
    # with value gates the backward reads o (dL/dgv = o * do - v * dv): keep it in fp32 for that
    o = alloc(v.shape, torch.float32 if gv is not None else v.dtype, v.device)
    BK, BV = _pow2(K), min(64, _pow2(V))
    grid = (triton.cdiv(V, BV), meta.nchunks, meta.nbh)
    _fwd_o_kernel[grid](q, k, v, _or(gkb, q), _or(gk, q), _or(gvb, v), _or(gv, v), _or(u, q), h, o,
                        meta.cu, meta.chunk_seq, meta.chunk_idx, scale, meta.N, meta.NT, meta.H, K, V,
                        C=meta.C, BS=SUB, BK=BK, BV=BV, GK=GK, GV=gv is not None, USE_U=u is not None,
                        REVERSE=reverse, VARLEN=meta.varlen, IEEE=_prec(ieee), LOWP=lowp,
                        **_launch_opts(K, 'fwd_o'))
    return o, ht, ht_ex, None, (gkb, gks, gvb, gvs)


def gla_bwd(q, k, v, gk, gv, u, scale, h0, o, do, dht, meta, reverse, A=None, cums=None):
    """``cums``: the forward's gate cumsums ``(gkb, gks, gvb, gvs)`` (gla_fwd's last output, computed from the
    same gates, meta and direction); None: computed here."""
    K, V = q.shape[-1], v.shape[-1]
    H = meta.H
    GK = 0 if gk is None else (1 if gk.dim() == 3 else 2)
    ieee = q.dtype == torch.float32
    if cums is not None:
        gkb, gks, gvb, gvs = cums
        assert (gkb is None) == (gk is None) and (gvb is None) == (gv is None), 'cums do not match the gates'
    else:
        gkb, gks = _gate_cumsum(gk, meta, reverse)
        gvb, gvs = _gate_cumsum(gv, meta, reverse)
    # 16-bit inputs: the backward's state, state-gradient and dq/dk kernels take fp32 operands (tf32 tensor
    # cores): the gate gradient q*dq - k*dk cancels, and bf16 operands there gave dL/dg errors of 2-3e-2 at
    # N = 4096 on the H100 (tf32: ~8x smaller operand rounding)
    lowp = _lowp(ieee) and not current_options().gla_bwd_fp32
    # the final-state gate-gradient term (dht * final state without the last token) cancels against the dk/dv
    # terms of that path: the state is taken from this recompute, in the backward's precision, not the forward's
    # (bf16 operands there: GSA dL/dg 2e-2 on the H100)
    need_ht = dht is not None and (gk is not None or gv is not None)
    h, _, ht = _fwd_h(k, v, gkb, gks, gvb, gvs, h0, need_ht, meta, GK, reverse, ieee, lowp=lowp)
    do = do.contiguous()
    BKh, BVh = _state_blocks(K, V, meta.nseq * H)
    dh = alloc((meta.total_chunks, H, K, V), torch.float32, q.device)
    dh0 = alloc((meta.nseq, H, K, V), torch.float32, q.device) if h0 is not None else None
    _bwd_dh_kernel[(triton.cdiv(K, BKh), triton.cdiv(V, BVh), meta.nseq * H)](
        q, do, _or(gkb, q), _or(gk, q), _or(gvb, q), dh, _or(dht, dh), _or(dh0, dh),
        meta.cu, meta.chunk_off, scale, meta.N, meta.NT, H, K, V, C=meta.C, BK=BKh, BV=BVh, GK=GK,
        GV=gv is not None, USE_U=u is not None, USE_DHT=dht is not None, STORE_DH0=h0 is not None,
        REVERSE=reverse, VARLEN=meta.varlen, IEEE=_prec(ieee), LOWP=lowp)
    if A is not None:
        dq, dk, dv, dbk, dbq = _bwd_A(q, k, v, gkb, gk, gks, u, scale, h, dh, A, do, meta, GK, reverse, ieee, lowp)
        dbv = None
    else:
        dq, dk, dv, dbk, dbv, dbq = _bwd_sub(q, k, v, gkb, gk, gks, gv, gvb, gvs, u, scale, h, dh, o, do, meta, GK,
                                             reverse, ieee, lowp)
    rows = meta.last_logical_rows(reverse)
    dgk = dgv = du = None
    if gk is not None:
        if dht is not None and ht is not None:
            term = (dht.float() * ht).sum(-1)                     # [S, H, K]
            if GK == 1:
                term = term.sum(-1)                                # [S, H]
            flat = dbk.view(-1, *dbk.shape[2:])
            flat.index_add_(0, rows, term)
        dgk = _revcumsum(dbk, meta, reverse)
        if dbq is not None:
            dgk = dgk - dbq
        dgk = dgk.to(gk.dtype)
    if gv is not None:
        if dht is not None and ht is not None:
            term = (dht.float() * ht).sum(-2)                     # [S, H, V]
            flat = dbv.view(-1, *dbv.shape[2:])
            flat.index_add_(0, rows, term)
        dgv = _revcumsum(dbv, meta, reverse).to(gv.dtype)
    if u is not None:
        dov = (do.float() * v.float()).sum(-1, keepdim=True)
        du = (scale * dov * q.float() * k.float()).sum((0, 1)).to(u.dtype)
    return dq, dk, dv, dgk, dgv, du, (dh0.to(h0.dtype) if dh0 is not None else None)


def _bwd_A(q, k, v, gkb, gk, gks, u, scale, h, dh, A, do, meta, GK, reverse, ieee, lowp):
    """Backward chunk kernels of the intra-chunk matrix path (no value gates): dA, dv, intra-chunk dq/dk, then
    dq, dk and the key-gate gradient buffers (dbk = q*dq - k*dk; dbq = q*dq with the bonus)."""
    K, V = q.shape[-1], v.shape[-1]
    H = meta.H
    BK, BV = min(64, _pow2(K)), min(64, _pow2(V))
    cm = dict(REVERSE=reverse, VARLEN=meta.varlen, IEEE=_prec(ieee))
    tabs = (meta.cu, meta.chunk_seq, meta.chunk_idx)
    dA = alloc(A.shape, torch.float32, q.device)
    _bwd_dA_kernel[(meta.nchunks, meta.nbh)](v, do, dA, *tabs, scale, meta.N, meta.NT, H, V, C=meta.C, BV=BV,
                                            LOWP=lowp, **cm, **_launch_opts(K, 'dA'))
    dv = alloc(v.shape, v.dtype, v.device)
    _bwd_dvA_kernel[(triton.cdiv(V, BV), meta.nchunks, meta.nbh)](
        k, _or(gks, k), A, do, dh, dv, *tabs, meta.N, meta.NT, H, K, V, C=meta.C, BK=BK, BV=BV, GK=GK,
        LOWP=_lowp(ieee), **cm, **_launch_opts(K, 'dvA'))
    dqi = alloc(q.shape, torch.float32, q.device)
    dki = alloc(k.shape, torch.float32, k.device)
    _bwd_intra_kernel[(triton.cdiv(K, BK) * (meta.C // SUB), meta.nchunks, meta.nbh)](
        q, k, _or(gkb, q), _or(gk, q), dA, dqi, dki, *tabs, meta.N, meta.NT, H, K, C=meta.C, BS=SUB, BK=BK, GK=GK,
        USE_U=u is not None, LOWP=lowp, **cm, **_launch_opts(K, 'intra'))
    dq = alloc(q.shape, q.dtype, q.device)
    dk = alloc(k.shape, k.dtype, k.device)
    dbk = alloc(gk.shape, torch.float32, q.device) if gk is not None else None
    dbq = alloc(gk.shape, torch.float32, q.device) if (gk is not None and u is not None) else None
    # one gate per head: the gate gradient sums over all of K, so one key block
    BKi = _pow2(K) if GK == 1 else BK
    _bwd_inter_kernel[(triton.cdiv(K, BKi), meta.nchunks, meta.nbh)](
        q, k, v, _or(gkb, q), _or(gk, q), _or(gks, q), _or(u, q), h, do, dh, dA, dqi, dki, dq, dk, _or(dbk, q),
        _or(dbq, q), *tabs, scale, meta.N, meta.NT, H, K, V, C=meta.C, BK=BKi, BV=BV, GK=GK, USE_U=u is not None,
        LOWP=lowp, **cm, **_launch_opts(K, 'inter'))
    return dq, dk, dv, dbk, dbq


def _bwd_sub(q, k, v, gkb, gk, gks, gv, gvb, gvs, u, scale, h, dh, o, do, meta, GK, reverse, ieee, lowp):
    """Backward chunk kernels that walk sub-blocks (the value-gate path): dv, dq, dk and the gate-gradient
    buffers (dbk, dbv, dbq)."""
    K, V = q.shape[-1], v.shape[-1]
    H = meta.H
    BK, BV = _pow2(K), min(64, _pow2(V))
    dv = alloc(v.shape, v.dtype, v.device)
    dbv = alloc(v.shape, torch.float32, v.device) if gv is not None else None
    gates = (_or(gkb, q), _or(gk, q), _or(gks, q), _or(gvb, v), _or(gv, v), _or(gvs, v), _or(u, q))
    _bwd_dv_kernel[(triton.cdiv(V, BV), meta.nchunks, meta.nbh)](
        q, k, v, *gates, _or(o, v), do, dh, dv, _or(dbv, v), meta.cu, meta.chunk_seq, meta.chunk_idx, scale,
        meta.N, meta.NT, H, K, V, C=meta.C, BS=SUB, BK=BK, BV=BV, GK=GK, GV=gv is not None,
        USE_U=u is not None, REVERSE=reverse, VARLEN=meta.varlen, IEEE=_prec(ieee),
        LOWP=_lowp(ieee) and gv is None, **_launch_opts(K, 'dv'))
    dq = alloc(q.shape, q.dtype, q.device)
    dk = alloc(k.shape, k.dtype, k.device)
    dbk = alloc(gk.shape, torch.float32, q.device) if gk is not None else None
    dbq = alloc(gk.shape, torch.float32, q.device) if (gk is not None and u is not None) else None
    # dq first: it writes q * dq into dbk, which the dk kernel completes to q * dq - k * dk
    common = dict(C=meta.C, BS=SUB, BK=BK, BV=BV, GK=GK, GV=gv is not None, USE_U=u is not None, REVERSE=reverse,
                  VARLEN=meta.varlen, IEEE=_prec(ieee), LOWP=lowp)
    _bwd_dq_kernel[(meta.nchunks, meta.nbh)](
        q, k, v, _or(gkb, q), _or(gk, q), _or(gvb, v), _or(gv, v), _or(u, q), h, do, dq, _or(dbk, q), _or(dbq, q),
        meta.cu, meta.chunk_seq, meta.chunk_idx, scale, meta.N, meta.NT, H, K, V, **common,
        **_launch_opts(K, 'dqk', 'dq'))
    _bwd_dk_kernel[(meta.nchunks, meta.nbh)](
        q, k, v, *gates, do, dh, dk, _or(dbk, q),
        meta.cu, meta.chunk_seq, meta.chunk_idx, scale, meta.N, meta.NT, H, K, V, **common,
        **_launch_opts(K, 'dqk', 'dk'))
    return dq, dk, dv, dbk, dbv, dbq


_INPUTS = ('q', 'k', 'v', 'gk', 'gv', 'u', 'h0')


def saved_layout(q, k, v, gk, gv, u, h0):
    """Names of what the Triton forward keeps for the backward, in order (the custom op's residuals): the
    intra-chunk scores ``A`` (A path) or the fp32 output ``o32`` (value gates, 16-bit inputs: dL/dgv reads o),
    the chunk-local gate cumsums (``gla_keep_cumsum``: fp32, in each gate's shape, 8 bytes per gate element and
    gate), and the contiguous copy of every input that was not contiguous (so the backward copies nothing)."""
    opts = current_options()
    if opts.gla_a_path and gv is None:
        names = ['A']
    else:
        names = ['o32'] if gv is not None and v.dtype != torch.float32 else []
    if opts.gla_keep_cumsum:
        names += (['gkb', 'gks'] if gk is not None else []) + (['gvb', 'gvs'] if gv is not None else [])
    names += [n for n, t in zip(_INPUTS, (q, k, v, gk, gv, u, h0)) if t is not None and not t.is_contiguous()]
    return names


def saved_like(names, q, k, v, gk, gv, u, h0, chunk_size):
    """Empty tensors shaped as :func:`saved_layout`'s residuals (the custom op's fake implementation)."""
    ins = dict(zip(_INPUTS, (q, k, v, gk, gv, u, h0)))
    f32 = torch.float32
    like = dict(A=lambda: q.new_empty((*q.shape[:3], chunk_size), dtype=f32),
                o32=lambda: v.new_empty(v.shape, dtype=f32),
                gkb=lambda: gk.new_empty(gk.shape, dtype=f32), gks=lambda: gk.new_empty(gk.shape, dtype=f32),
                gvb=lambda: gv.new_empty(gv.shape, dtype=f32), gvs=lambda: gv.new_empty(gv.shape, dtype=f32))
    return [like[n]() if n in like else ins[n].new_empty(ins[n].shape) for n in names]


def chunk_gla_fwd(q, k, v, gk, gv, u, scale, h0, output_final_state, cu_seqlens, reverse, chunk_size):
    """Triton forward of ``vla_mm::chunk_gla``: (o in v's dtype, fp32 final state or None, residuals)."""
    names = saved_layout(q, k, v, gk, gv, u, h0)
    dense = {n: t.contiguous() for n, t in zip(_INPUTS, (q, k, v, gk, gv, u, h0)) if t is not None}
    q, k, v, gk, gv, u, h0 = (dense.get(n) for n in _INPUTS)
    B, N, H, K = q.shape
    meta = PackedSeqs(B, N, cu_seqlens, q.device).chunks(chunk_size, H)
    o, ht, _, A, cums = gla_fwd(q, k, v, gk, gv, u, scale, h0, output_final_state, meta, reverse)
    kept = dict(dense, A=A, o32=o, gkb=cums[0], gks=cums[1], gvb=cums[2], gvs=cums[3])
    return o.to(v.dtype), ht, [kept[n] for n in names]


def chunk_gla_bwd(do, dht, o, saved, q, k, v, gk, gv, u, scale, h0, output_final_state, cu_seqlens, reverse,
                  chunk_size):
    """Triton backward of ``vla_mm::chunk_gla`` from the forward's output ``o`` and residuals ``saved``:
    (dq, dk, dv, dgk, dgv, du, dh0), None for an input that is None."""
    names = saved_layout(q, k, v, gk, gv, u, h0)
    if len(names) != len(saved):
        raise RuntimeError(f'chunk_gla backward expected {names} from the forward, got {len(saved)} tensors: the '
                           'kernel options gla_a_path / gla_keep_cumsum changed between forward and backward')
    kept = dict(zip(names, saved))
    q, k, v, gk, gv, u, h0 = (kept.get(n, t) for n, t in zip(_INPUTS, (q, k, v, gk, gv, u, h0)))
    B, N, H, K = q.shape
    meta = PackedSeqs(B, N, cu_seqlens, q.device).chunks(chunk_size, H)
    cums = tuple(kept.get(n) for n in ('gkb', 'gks', 'gvb', 'gvs')) if current_options().gla_keep_cumsum else None
    do = torch.zeros_like(o) if do is None else do
    dht = dht.contiguous() if (dht is not None and output_final_state) else None
    return gla_bwd(q, k, v, gk, gv, u, scale, h0, kept.get('o32', o) if gv is not None else None, do, dht, meta,
                   reverse, A=kept.get('A'), cums=cums)
