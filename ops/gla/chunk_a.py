"""Intra-chunk matrix path ("A path") of the gated linear attention core: every call without value gates
(``kernel_options(gla_a_path=True)``, the default; see ``chunk.py`` for the algorithm)."""
import torch
import triton
import triton.language as tl

from ..common.jit import chunk_info, phys_row
from ..common.launch import jit
from ..common.options import alloc, cdiv
from .blocks import (NEG_INF, _bonus, _chunk_rows, _decay, _diag_block_scores, _diag_decay, _diag_gmm,
                     _diag_gmmT, _diag_self_term, _grow, _gtile, _gvec, _hstore, _htile, _lpre, _lsuf, _mm,
                     _pair_decays, _qgate, _rows, _state_tile, _to_ref, _vblock_sum)
from .launch import (FUSE_A, FUSE_DA, FUSE_INTRA, RECOMPUTE_A, RECOMPUTE_A_MAX_V, SUB, _gate_kind, _launch_opts,
                     _lowp, _one_gate, _or, _pow2, _prec)

# ----------------------------------------------------------------------------------------------------------
# intra-chunk matrix path (no value gates): the intra-chunk scores A (forward) and their gradient dA (backward)
# are formed once per chunk and stored (fp32 [B, N, H, C], row = physical row of t, column = logical offset of s
# in the chunk); the output, dv and the inter-chunk dq/dk terms are then full-chunk matmuls. Only two kernels
# walk sub-blocks: _fwd_A_kernel (A) and _bwd_intra_kernel (the intra-chunk dq/dk from dA). Each keeps the
# sub-block scheme above (reference rows, exponents <= 0, exact diagonal sub-blocks); the full-chunk kernels hold
# only [C, *] x [*, *] dots, the sub-block kernels only [BS, *] ones (no mixed dot sizes in one kernel).
# ----------------------------------------------------------------------------------------------------------
@jit
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
        t_i, m_i, r_i = _rows(base, ar, L, bos, eos, REVERSE)
        q_i = _htile(q, r_i, m_i, ck, K, H, i_h) * scale
        k_i = _htile(k, r_i, m_i, ck, K, H, i_h)
        if GK > 0:
            g_i = _gtile(gkr, r_i, m_i, ck, K, H, i_h, GK)
        else:
            g_i = 0.  # unused
        # earlier sub-blocks j < i: reference row r = last row of sub-block i-1, both factors <= 1
        if i_i > 0:
            r_ref = phys_row(base - 1, bos, eos, REVERSE)
            if GK > 0:
                qr = _decay(q_i, _lpre(g_i, USE_U, GK, BS), m_i)
                bk_r = _grow(gkb, r_ref, ck, K, H, i_h, GK)
            else:
                qr = q_i
                bk_r = 0.
            for j in range(i_i):
                t_j, m_j, r_j = _rows(i_t * C + j * BS, ar, L, bos, eos, REVERSE)
                k_j = _to_ref(_htile(k, r_j, m_j, ck, K, H, i_h), gkr, gkb, bk_r, r_j, m_j, j == i_i - 1,
                              ck, K, H, i_h, GK, BS)
                A_ij = _mm(qr.to(DT), tl.trans(k_j.to(DT)), IEEE)
                _hstore(A, A_ij, r_i, m_i, j * BS + ar, C, H, i_h)
        # diagonal sub-block (exact)
        uu = _bonus(u, i_h, ck, K, USE_U)
        A_ii = _diag_block_scores(q_i, k_i, g_i, uu, k, gkr, base, t_i, m_i, r_i, L, bos, eos, ck, K, H, i_h,
                                  BS, GK, USE_U, REVERSE, DT, IEEE)
        _hstore(A, A_ii, r_i, m_i, i_i * BS + ar, C, H, i_h)
        for j in range(i_i + 1, C // BS):
            _hstore(A, tl.zeros([BS, BS], dtype=tl.float32), r_i, m_i, j * BS + ar, C, H, i_h)


@jit
def _fwd_oA_kernel(q, k, v, gkb, gkr, h, A, o, cu, chunk_seq, chunk_idx, scale, N, NT, H, K, V,
                   C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GK: tl.constexpr, USE_U: tl.constexpr,
                   REVERSE: tl.constexpr, VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr,
                   FUSE_A: tl.constexpr, STORE_A: tl.constexpr):
    """o = scale * (q * exp(bq)) @ S_chunk_start + A @ v, one chunk (all C rows) per program. FUSE_A (one gate
    per head or none, no bonus): A = scale * (q @ k^T) * exp(b_t - b_s) (s <= t; ``_pair_decays`` from the raw
    gates ``gkr``) formed here over the same K blocks; STORE_A: stored by the first V block for the backward
    (else ``_bwd_dvA_kernel`` forms it again)."""
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_h, i_t, hc, bos, eos, L, ac, t, m, r = _chunk_rows(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, C, REVERSE,
                                                         VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    cv = i_v * BV + tl.arange(0, BV)
    b_o = tl.zeros([C, BV], dtype=tl.float32)
    if FUSE_A:
        a = tl.zeros([C, C], dtype=tl.float32)
    for ik in range(tl.cdiv(K, BK)):
        ck = ik * BK + tl.arange(0, BK)
        qs = _htile(q, r, m, ck, K, H, i_h) * scale
        qe = qs
        if GK > 0:
            qe = qs * tl.exp(_qgate(gkb, gkr, r, m, ck, K, H, i_h, GK, USE_U))
        b_o += _mm(qe.to(DT), _state_tile(h, hc, H, i_h, ck, cv, K, V).to(DT), IEEE)
        if FUSE_A:
            a += _mm(qs.to(DT), tl.trans(_htile(k, r, m, ck, K, H, i_h).to(DT)), IEEE)
    if FUSE_A:
        if GK > 0:
            a = a * _pair_decays(gkr, ac, r, m, H, i_h, False)
        else:
            a = tl.where((ac[None, :] <= ac[:, None]) & m[:, None] & m[None, :], a, 0.)
        if STORE_A and i_v == 0:
            _hstore(A, a, r, m, ac, C, H, i_h)
    else:
        a = _htile(A, r, m, ac, C, H, i_h)
    b_o += _mm(a.to(DT), _htile(v, r, m, cv, V, H, i_h).to(DT), IEEE)
    _hstore(o, b_o, r, m, cv, V, H, i_h)


@jit
def _bwd_dA_kernel(q, k, v, gk, do, dA, dAa, dqi, dki, cu, chunk_seq, chunk_idx, scale, N, NT, H, K, V,
                   C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GK: tl.constexpr, ADJ: tl.constexpr,
                   REVERSE: tl.constexpr, VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr,
                   FUSE_INTRA: tl.constexpr):
    """dA[t, s] = scale * do_t . v_s for s <= t, zero above (fp32 [B, N, H, C], laid out as A). ADJ (bonus form
    with gates): the pairs s = t - 1 (gate factor exp(0)) go to dAa[t] ([B, N, H], 0 at the chunk's first row)
    instead, so that the intra-chunk dq / dk from dA hold no pair whose gate terms cancel. FUSE_INTRA (one gate
    per head or none, no bonus): also ``_bwd_intra_kernel``'s strict-pair dq / dk, as full-chunk products with
    dS = dA * exp(b_t - b_s) (s < t; ``_pair_decays`` from the raw gates ``gk``): dqi = dS @ k, dki = dS^T @ q."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_h, i_t, hc, bos, eos, L, ac, t, m, r = _chunk_rows(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, C, REVERSE,
                                                         VARLEN)
    DT = v.dtype.element_ty if LOWP else tl.float32
    acc = tl.zeros([C, C], dtype=tl.float32)
    for iv in range(tl.cdiv(V, BV)):
        cv = iv * BV + tl.arange(0, BV)
        acc += _mm(_htile(do, r, m, cv, V, H, i_h).to(DT),
                   tl.trans(_htile(v, r, m, cv, V, H, i_h).to(DT)), IEEE)
    acc = tl.where(ac[None, :] <= ac[:, None], acc * scale, 0.)
    if ADJ:
        sub = ac[None, :] == ac[:, None] - 1
        tl.store(dAa + r.to(tl.int64) * H + i_h, tl.sum(tl.where(sub, acc, 0.), axis=1), mask=m)
        acc = tl.where(sub, 0., acc)
    _hstore(dA, acc, r, m, ac, C, H, i_h)
    if FUSE_INTRA:
        if GK > 0:
            ds = acc * _pair_decays(gk, ac, r, m, H, i_h, True)
        else:
            ds = tl.where((ac[None, :] < ac[:, None]) & m[:, None] & m[None, :], acc, 0.)
        for ik in range(tl.cdiv(K, BK)):
            ck = ik * BK + tl.arange(0, BK)
            _hstore(dqi, _mm(ds.to(DT), _htile(k, r, m, ck, K, H, i_h).to(DT), IEEE), r, m, ck, K, H, i_h)
            _hstore(dki, _mm(tl.trans(ds.to(DT)), _htile(q, r, m, ck, K, H, i_h).to(DT), IEEE), r, m, ck, K, H,
                    i_h)


@jit
def _bwd_dvA_kernel(q, k, gkr, gks, A, do, dh, dv, cu, chunk_seq, chunk_idx, scale, N, NT, H, K, V,
                    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GK: tl.constexpr, REVERSE: tl.constexpr,
                    VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr, FORM_A: tl.constexpr):
    """dv = A^T @ do + (k * exp(b_last - b)) @ dh, one chunk per program. FORM_A (the forward did not store A:
    one gate per head or none, no bonus): A formed as ``_fwd_oA_kernel``'s FUSE_A forms it, over the same K
    blocks."""
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_h, i_t, hc, bos, eos, L, ac, t, m, r = _chunk_rows(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, C, REVERSE,
                                                         VARLEN)
    DT = k.dtype.element_ty if LOWP else tl.float32
    cv = i_v * BV + tl.arange(0, BV)
    b_dv = tl.zeros([C, BV], dtype=tl.float32)
    if FORM_A:
        a = tl.zeros([C, C], dtype=tl.float32)
    for ik in range(tl.cdiv(K, BK)):
        ck = ik * BK + tl.arange(0, BK)
        kt = _htile(k, r, m, ck, K, H, i_h)
        ke = kt
        if GK > 0:
            ke = _decay(kt, _gtile(gks, r, m, ck, K, H, i_h, GK), m)
        b_dv += _mm(ke.to(DT), _state_tile(dh, hc, H, i_h, ck, cv, K, V).to(DT), IEEE)
        if FORM_A:
            a += _mm((_htile(q, r, m, ck, K, H, i_h) * scale).to(DT), tl.trans(kt.to(DT)), IEEE)
    if FORM_A:
        if GK > 0:
            a = a * _pair_decays(gkr, ac, r, m, H, i_h, False)
        else:
            a = tl.where((ac[None, :] <= ac[:, None]) & m[:, None] & m[None, :], a, 0.)
    else:
        a = _htile(A, r, m, ac, C, H, i_h)
    b_dv += _mm(tl.trans(a.to(DT)), _htile(do, r, m, cv, V, H, i_h).to(DT), IEEE)
    _hstore(dv, b_dv, r, m, cv, V, H, i_h)


@jit
def _bwd_intra_kernel(q, k, gkb, gkr, dA, dqi, dki, cu, chunk_seq, chunk_idx, N, NT, H, K,
                      C: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, GK: tl.constexpr, USE_U: tl.constexpr,
                      REVERSE: tl.constexpr, VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr,
                      LOADM: tl.constexpr):
    """Intra-chunk dq and dk of sub-block program_id(0) % (C // BS), key block program_id(0) // (C // BS), from dA,
    strict pairs only (s < t; the t == s terms are added by _bwd_inter_kernel), fp32 (LOADM: the vector-gate
    diagonal sub-block reads dA's columns from memory):
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
        t_i, m_i, r_i = _rows(base, ar, L, bos, eos, REVERSE)
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
                t_j, m_j, r_j = _rows(i_t * C + j * BS, ar, L, bos, eos, REVERSE)
                k_j = _to_ref(_htile(k, r_j, m_j, ck, K, H, i_h), gkr, gkb, bk_r, r_j, m_j, j == i_i - 1,
                              ck, K, H, i_h, GK, BS)
                dA_ij = _htile(dA, r_i, m_i, j * BS + ar, C, H, i_h)
                dq_i += _mm(dA_ij.to(DT), k_j.to(DT), IEEE)
            if GK > 0:
                dq_i = _decay(dq_i, _lpre(g_i, USE_U, GK, BS), m_i)
        # dk from later sub-blocks j > i (reference row: last row of sub-block j-1)
        dk_i = tl.zeros([BS, BK], dtype=tl.float32)
        for j in range(i_i + 1, NS):
            base_j = i_t * C + j * BS
            if base_j < L:
                t_j, m_j, r_j = _rows(base_j, ar, L, bos, eos, REVERSE)
                q_j = _htile(q, r_j, m_j, ck, K, H, i_h)
                dA_ji = _htile(dA, r_j, m_j, ci, C, H, i_h)
                if GK > 0:
                    q_j = _decay(q_j, _lpre(_gtile(gkr, r_j, m_j, ck, K, H, i_h, GK), USE_U, GK, BS), m_j)
                    if j == i_i + 1:
                        fk = tl.exp(_lsuf(g_i, GK, BS))
                    else:
                        fk = tl.exp(_grow(gkb, phys_row(base_j - 1, bos, eos, REVERSE), ck, K, H, i_h, GK)
                                    - _gtile(gkb, r_i, m_i, ck, K, H, i_h, GK))
                    dk_i += fk * _mm(tl.trans(dA_ji.to(DT)), q_j.to(DT), IEEE)
                else:
                    dk_i += _mm(tl.trans(dA_ji.to(DT)), q_j.to(DT), IEEE)
        # diagonal sub-block (exact), strict pairs
        dA_ii = _htile(dA, r_i, m_i, ci, C, H, i_h)
        if GK == 2:
            if USE_U:
                gT = g_i
            else:
                gT = tl.zeros([BS, BK], dtype=tl.float32)
            dA_p = dA + i_h * C + i_i * BS
            dq_i += _diag_gmm(dA_ii, dA_p, H * C, gT, k, gkr, base, t_i, m_i, L, bos, eos, ck, K, H, i_h, BS, BK, True,
                              REVERSE, LOADM)
            dk_i += _diag_gmmT(dA_ii, dA_p, H * C, q, 1.0, gkr, base, L, bos, eos, ck, K, H, i_h, BS, BK, True, USE_U,
                               REVERSE, LOADM)
        else:
            if GK == 1:
                dA_ii = dA_ii * _diag_decay(_gvec(gkr, r_i, m_i, H, i_h), t_i, m_i, BS, USE_U, True)
            else:
                dA_ii = tl.where((t_i[:, None] > t_i[None, :]) & m_i[:, None], dA_ii, 0.)
            dq_i += _mm(dA_ii.to(DT), _htile(k, r_i, m_i, ck, K, H, i_h).to(DT), IEEE)
            dk_i += _mm(tl.trans(dA_ii.to(DT)), _htile(q, r_i, m_i, ck, K, H, i_h).to(DT), IEEE)
        _hstore(dqi, dq_i, r_i, m_i, ck, K, H, i_h)
        _hstore(dki, dk_i, r_i, m_i, ck, K, H, i_h)


@jit
def _bwd_inter_kernel(q, k, v, gkb, gkr, gks, u, h, do, dh, dA, dqi, dki, dAa, yq, zk, dq, dk, dbk, dbq,
                      cu, chunk_seq, chunk_idx, scale, N, NT, H, K, V, NV,
                      C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, GK: tl.constexpr, USE_U: tl.constexpr,
                      ADJ: tl.constexpr, REVERSE: tl.constexpr, VARLEN: tl.constexpr, IEEE: tl.constexpr,
                      LOWP: tl.constexpr, INTRA: tl.constexpr):
    """dq = scale * (do @ h^T) * exp(bq) + intra, dk = (v @ dh^T) * exp(b_last - b) + intra, one chunk and key
    block per program (INTRA: one gate per head or none, no bonus: the intra-chunk terms formed here as
    ``_bwd_dA_kernel``'s FUSE_INTRA forms them, dA = scale * tril(do @ v^T) from the same do / v tiles, instead of
    read from dA / dqi / dki); the key-gate gradient q * dq - k * dk into dbk (q * dq also into dbq with the
    bonus), without the terms whose gate factor is exp(0) over an empty range of gates (they cancel exactly in it),
    which are added to dq / dk afterwards: the t == s terms, the last token's final-state path, and with the bonus
    (ADJ) the pairs (t, t - 1): inside the chunk (dAa), across the chunk boundary (the first row's inter term
    without the previous token, yq; the last row's without the next one, zk; partial sums over NV value blocks)."""
    i_k, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_h, i_t, hc, bos, eos, L, ac, t, m, r = _chunk_rows(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, C, REVERSE,
                                                         VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    ck = i_k * BK + tl.arange(0, BK)
    dq_c = tl.zeros([C, BK], dtype=tl.float32)
    dk_c = tl.zeros([C, BK], dtype=tl.float32)
    if INTRA:
        da = tl.zeros([C, C], dtype=tl.float32)
    for iv in range(tl.cdiv(V, BV)):
        cv = iv * BV + tl.arange(0, BV)
        do_t = _htile(do, r, m, cv, V, H, i_h).to(DT)
        v_t = _htile(v, r, m, cv, V, H, i_h).to(DT)
        dq_c += _mm(do_t, tl.trans(_state_tile(h, hc, H, i_h, ck, cv, K, V).to(DT)), IEEE)
        dk_c += _mm(v_t, tl.trans(_state_tile(dh, hc, H, i_h, ck, cv, K, V).to(DT)), IEEE)
        if INTRA:
            da += _mm(do_t, tl.trans(v_t), IEEE)
    dq_c = dq_c * scale
    if GK > 0:
        dq_c = dq_c * tl.exp(_qgate(gkb, gkr, r, m, ck, K, H, i_h, GK, USE_U))
        # the row whose inter-chunk dk term is kept out of the gate gradient (added to dk below): the last token
        # (its final-state path); with the bonus the chunk's last row (its pair with the next chunk's first row)
        if ADJ:
            t_x = tl.minimum(i_t * C + C, L) - 1
        else:
            t_x = L - 1
        last = (t == t_x)[:, None]
        if ADJ:
            dk_x = tl.sum(tl.where(last, dk_c, 0.), axis=0)[None, :]     # one row: [1, BK]
        else:
            dk_x = tl.where(last, dk_c, 0.)
        dk_c = dk_c * tl.exp(tl.where(m[:, None] & (t != t_x)[:, None], _gtile(gks, r, m, ck, K, H, i_h, GK),
                                      NEG_INF))
        if ADJ:
            first = (t == i_t * C)[:, None]
            yv = _vblock_sum(yq, hc, NV, H, i_h, ck, K)
            zv = _vblock_sum(zk, hc, NV, H, i_h, ck, K)
            dq_x = tl.sum(tl.where(first, dq_c, 0.), axis=0)[None, :]
            dq_c = tl.where(first, yv[None, :] * scale, dq_c)
            dk_c = tl.where(last, zv[None, :], dk_c)
    q_c = _htile(q, r, m, ck, K, H, i_h)
    k_c = _htile(k, r, m, ck, K, H, i_h)
    if INTRA:
        da = tl.where(ac[None, :] <= ac[:, None], da * scale, 0.)
        if GK > 0:
            ds = da * _pair_decays(gkr, ac, r, m, H, i_h, True)
        else:
            ds = tl.where((ac[None, :] < ac[:, None]) & m[:, None] & m[None, :], da, 0.)
        dq_c += _mm(ds.to(DT), k_c.to(DT), IEEE)
        dk_c += _mm(tl.trans(ds.to(DT)), q_c.to(DT), IEEE)
    else:
        dq_c += _htile(dqi, r, m, ck, K, H, i_h)
        dk_c += _htile(dki, r, m, ck, K, H, i_h)
    if GK > 0:
        qdq = q_c * dq_c
        if GK == 2:
            _hstore(dbk, qdq - k_c * dk_c, r, m, ck, K, H, i_h)
            if USE_U:
                _hstore(dbq, qdq, r, m, ck, K, H, i_h)
        else:
            tl.store(dbk + r.to(tl.int64) * H + i_h, tl.sum(qdq - k_c * dk_c, axis=1), mask=m)
            if USE_U:
                tl.store(dbq + r.to(tl.int64) * H + i_h, tl.sum(qdq, axis=1), mask=m)
        if ADJ:
            # the chunk's first row has no intra-chunk dq term, its last row no intra-chunk dk term
            dq_c = tl.where(first, dq_x, dq_c)
            dk_c = tl.where(last, dk_x, dk_c)
        else:
            dk_c += dk_x
    # t == s terms: dA[t, t] (scale * do_t . v_t) times k_t / q_t, or u * k_t / u * q_t with the bonus
    if INTRA:
        dA_tt = tl.sum(tl.where(ac[None, :] == ac[:, None], da, 0.), axis=1)
    else:
        dA_tt = tl.load(dA + r.to(tl.int64) * H * C + i_h * C + ac, mask=m, other=0.)
    dq_c += _diag_self_term(dA_tt, dA_tt, k_c, u, i_h, ck, K, USE_U)
    dk_c += _diag_self_term(dA_tt, dA_tt, q_c, u, i_h, ck, K, USE_U)
    if ADJ:
        # the pairs (t, t - 1) inside the chunk: dq_t += dA[t, t-1] k_{t-1}, dk_s += dA[s+1, s] q_{s+1}
        m_p = m & (t > i_t * C)
        a_p = tl.load(dAa + r.to(tl.int64) * H + i_h, mask=m_p, other=0.)
        dq_c += a_p[:, None] * _htile(k, phys_row(t - 1, bos, eos, REVERSE), m_p, ck, K, H, i_h)
        m_n = (t + 1 < L) & (ac < C - 1)
        r_n = phys_row(t + 1, bos, eos, REVERSE)
        a_n = tl.load(dAa + r_n.to(tl.int64) * H + i_h, mask=m_n, other=0.)
        dk_c += a_n[:, None] * _htile(q, r_n, m_n, ck, K, H, i_h)
    _hstore(dq, dq_c, r, m, ck, K, H, i_h)
    _hstore(dk, dk_c, r, m, ck, K, H, i_h)


# ----------------------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------------------
def _a_plan(K, V, gk, u):
    """(launch options of ``_fwd_oA_kernel``, whether it forms A itself, whether the forward stores A for the
    backward). By default A is formed again only where dv has one value block (each block's program forms it)."""
    opts = _launch_opts(K, 'fwd_oA')
    fuse = bool(opts.pop('fuse_a', FUSE_A)) and _one_gate(_gate_kind(gk), u)
    recompute = bool(opts.pop('recompute_a', RECOMPUTE_A and V <= RECOMPUTE_A_MAX_V))
    return opts, fuse, not (fuse and recompute)


def _fwd_A(q, k, v, gkb, gk, u, h, scale, meta, GK, reverse, ieee, lowp):
    """Forward chunk kernels of the A path: the intra-chunk scores A (fp32 [B, N, H, C]), then o; (o, A or None
    where the backward forms A again: ``_a_plan``)."""
    K, V = q.shape[-1], v.shape[-1]
    oa_opts, fuse, store = _a_plan(K, V, gk, u)
    # intra-chunk scores once (A, fp32; stored for the backward's dv unless it forms them again), then full-chunk
    # matmuls
    A = alloc((*q.shape[:3], meta.C), torch.float32, q.device) if store else None
    if not fuse:
        _fwd_A_kernel[(meta.C // SUB, meta.nchunks, meta.nbh)](
            q, k, _or(gkb, q), _or(gk, q), _or(u, q), A, meta.cu, meta.chunk_seq, meta.chunk_idx, scale, meta.N,
            meta.NT, meta.H, K, C=meta.C, BS=SUB, BK=_pow2(K), GK=GK, USE_U=u is not None, REVERSE=reverse,
            VARLEN=meta.varlen, IEEE=_prec(ieee), LOWP=lowp, **_launch_opts(K, 'fwd_A'))
    o = alloc(v.shape, v.dtype, v.device)
    BK, BV = min(64, _pow2(K)), min(64, _pow2(V))
    _fwd_oA_kernel[(cdiv(V, BV), meta.nchunks, meta.nbh)](
        q, k, v, _or(gkb, q), _or(gk, q), h, _or(A, o), o, meta.cu, meta.chunk_seq, meta.chunk_idx, scale, meta.N,
        meta.NT, meta.H, K, V, C=meta.C, BK=BK, BV=BV, GK=GK, USE_U=u is not None, REVERSE=reverse,
        VARLEN=meta.varlen, IEEE=_prec(ieee), LOWP=lowp, FUSE_A=fuse, STORE_A=store, **oa_opts)
    return o, A


def _bwd_A(q, k, v, gkb, gk, gks, u, scale, h, dh, A, do, meta, GK, reverse, ieee, lowp, yq=None, zk=None):
    """Backward chunk kernels of the intra-chunk matrix path (no value gates): dA, dv, intra-chunk dq/dk, then
    dq, dk and the key-gate gradient buffers (dbk = q*dq - k*dk; dbq = q*dq with the bonus). ``A``: the forward's
    scores, None where it did not store them (``_a_plan``: formed again in ``_bwd_dvA_kernel``). ``yq``, ``zk``:
    the state kernels' boundary terms of the bonus form with gates (``_fwd_h(do=...)``, ``_bwd_dh(v=...)``)."""
    K, V = q.shape[-1], v.shape[-1]
    H = meta.H
    BK, BV = min(64, _pow2(K)), min(64, _pow2(V))
    cm = dict(REVERSE=reverse, VARLEN=meta.varlen, IEEE=_prec(ieee))
    tabs = (meta.cu, meta.chunk_seq, meta.chunk_idx)
    adj = yq is not None
    form_a = A is None
    assert not form_a or _one_gate(GK, u), 'A is formed again only with one gate per head or none, no bonus'
    da_opts = _launch_opts(K, 'dA')
    ie_opts = _launch_opts(K, 'inter')
    fuse = bool(da_opts.pop('fuse_intra', FUSE_INTRA)) and _one_gate(GK, u)
    # and with fuse_da, the fused intra-chunk terms inside _bwd_inter_kernel: no _bwd_dA_kernel, no dA / dqi / dki
    merge = bool(ie_opts.pop('fuse_da', FUSE_DA)) and fuse
    dA = dAa = dqi = dki = None
    if not merge:
        dA = alloc((*q.shape[:3], meta.C), torch.float32, q.device)
        dAa = alloc(q.shape[:3], torch.float32, q.device) if adj else None
        dqi = alloc(q.shape, torch.float32, q.device)
        dki = alloc(k.shape, torch.float32, k.device)
        _bwd_dA_kernel[(meta.nchunks, meta.nbh)](
            q, k, v, _or(gk, q), do, dA, _or(dAa, dA), dqi, dki, *tabs, scale, meta.N, meta.NT, H, K, V, C=meta.C,
            BK=BK, BV=BV, GK=GK, ADJ=adj, LOWP=lowp, FUSE_INTRA=fuse, **cm, **da_opts)
    dv = alloc(v.shape, v.dtype, v.device)
    _bwd_dvA_kernel[(cdiv(V, BV), meta.nchunks, meta.nbh)](
        q, k, _or(gk, k), _or(gks, k), _or(A, do), do, dh, dv, *tabs, scale, meta.N, meta.NT, H, K, V, C=meta.C,
        BK=BK, BV=BV, GK=GK, LOWP=_lowp(ieee), FORM_A=form_a, **cm, **_launch_opts(K, 'dvA'))
    if not fuse:
        in_opts = _launch_opts(K, 'intra')
        _bwd_intra_kernel[(cdiv(K, BK) * (meta.C // SUB), meta.nchunks, meta.nbh)](
            q, k, _or(gkb, q), _or(gk, q), dA, dqi, dki, *tabs, meta.N, meta.NT, H, K, C=meta.C, BS=SUB, BK=BK,
            GK=GK, USE_U=u is not None, LOWP=lowp, LOADM=bool(in_opts.pop('load_m', u is not None)), **cm, **in_opts)
    dq = alloc(q.shape, q.dtype, q.device)
    dk = alloc(k.shape, k.dtype, k.device)
    dbk = alloc(gk.shape, torch.float32, q.device) if gk is not None else None
    dbq = alloc(gk.shape, torch.float32, q.device) if (gk is not None and u is not None) else None
    # one gate per head: the gate gradient sums over all of K, so one key block
    BKi = _pow2(K) if GK == 1 else BK
    _bwd_inter_kernel[(cdiv(K, BKi), meta.nchunks, meta.nbh)](
        q, k, v, _or(gkb, q), _or(gk, q), _or(gks, q), _or(u, q), h, do, dh, _or(dA, do), _or(dqi, do), _or(dki, do),
        _or(dAa, do), _or(yq, do), _or(zk, do), dq, dk, _or(dbk, q), _or(dbq, q), *tabs, scale, meta.N, meta.NT, H,
        K, V, yq.shape[1] if adj else 0, C=meta.C, BK=BKi, BV=BV, GK=GK, USE_U=u is not None, ADJ=adj, LOWP=lowp,
        INTRA=merge, **cm, **ie_opts)
    return dq, dk, dv, dbk, dbq
