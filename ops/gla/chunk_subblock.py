"""Sub-block path of the gated linear attention core (value gates, GSA's first pass; every call with
``kernel_options(gla_a_path=False)``): each chunk kernel walks the sub-blocks of its chunk and re-forms the
intra-chunk scores (see ``chunk.py`` for the algorithm)."""
import torch
import triton
import triton.language as tl

from ..common.jit import chunk_info, phys_row
from ..common.launch import jit
from ..common.options import alloc, cdiv
from .blocks import (NEG_INF, _bonus, _decay, _diag_block_scores, _diag_decay, _diag_gmm, _diag_gmmT,
                     _diag_scores, _diag_self_term, _grow, _gtile, _gvec, _hrow, _hstore, _htile, _lpre, _lsuf, _mm,
                     _qgate, _rows, _state_tile, _to_ref, _vblock_sum)
from .launch import SUB, _launch_opts, _lowp, _or, _pow2, _prec


@jit
def _fwd_o_kernel(q, k, v, gkb, gkr, gvb, gvr, u, h, o, oex, cu, chunk_seq, chunk_idx, scale, N, NT, H, K, V,
                  C: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  GK: tl.constexpr, GV: tl.constexpr, USE_U: tl.constexpr, REVERSE: tl.constexpr,
                  VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    """o, and with value gates also oex (fp32): o without its t == s terms, whose value-gate factor is exp(0):
    dL/dgv = o * do - v * dv would cancel them exactly; the backward reads oex (see _bwd_dv_kernel)."""
    i_v, i_c, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    ck = tl.arange(0, BK)
    cv = i_v * BV + tl.arange(0, BV)
    ar = tl.arange(0, BS)
    hs = _state_tile(h, hc, H, i_h, ck, cv, K, V)
    uu = _bonus(u, i_h, ck, K, USE_U)
    for i in range(C // BS):
        base = i_t * C + i * BS
        if base < L:
            t_i, m_i, r_i = _rows(base, ar, L, bos, eos, REVERSE)
            q_i = _htile(q, r_i, m_i, ck, K, H, i_h) * scale
            k_i = _htile(k, r_i, m_i, ck, K, H, i_h)
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
                gv_i = _htile(gvr, r_i, m_i, cv, V, H, i_h)
                o_i = o_i * tl.exp(_htile(gvb, r_i, m_i, cv, V, H, i_h))
            # earlier sub-blocks j < i, reference row r = last row of sub-block i-1
            if i > 0:
                r_ref = phys_row(tl.maximum(base - 1, 0), bos, eos, REVERSE)
                if GK > 0:
                    qr = _decay(q_i, _lpre(g_i, USE_U, GK, BS), m_i)
                    bk_r = _grow(gkb, r_ref, ck, K, H, i_h, GK)
                else:
                    qr = q_i
                    bk_r = 0.
                if GV:
                    bv_r = _grow(gvb, r_ref, cv, V, H, i_h, 2)
                acc = tl.zeros([BS, BV], dtype=tl.float32)
                for j in range(i):
                    t_j, m_j, r_j = _rows(i_t * C + j * BS, ar, L, bos, eos, REVERSE)
                    k_j = _to_ref(_htile(k, r_j, m_j, ck, K, H, i_h), gkr, gkb, bk_r, r_j, m_j, j == i - 1,
                                  ck, K, H, i_h, GK, BS)
                    A = _mm(qr.to(DT), tl.trans(k_j.to(DT)), IEEE)
                    v_j = _htile(v, r_j, m_j, cv, V, H, i_h)
                    if GV:
                        v_j = _to_ref(v_j, gvr, gvb, bv_r, r_j, m_j, j == i - 1, cv, V, H, i_h, 2, BS)
                    acc += _mm(A.to(DT), v_j.to(DT), IEEE)
                if GV:
                    acc = _decay(acc, _lpre(gv_i, False, 2, BS), m_i)
                o_i += acc
            # diagonal sub-block
            A = _diag_block_scores(q_i, k_i, g_i, uu, k, gkr, base, t_i, m_i, r_i, L, bos, eos, ck, K, H, i_h,
                                   BS, GK, USE_U, REVERSE, DT, IEEE)
            if GV:
                o_i += _diag_gmm(A, v, 0, tl.zeros([BS, BV], dtype=tl.float32), v, gvr, base, t_i, m_i, L, bos,
                                 eos, cv, V, H, i_h, BS, BV, True, REVERSE, False)
                _hstore(oex, o_i, r_i, m_i, cv, V, H, i_h)
                a_tt = tl.sum(tl.where(ar[:, None] == ar[None, :], A, 0.), axis=1)
                o_i += a_tt[:, None] * _htile(v, r_i, m_i, cv, V, H, i_h)
            else:
                v_i = _htile(v, r_i, m_i, cv, V, H, i_h)
                o_i += _mm(A.to(DT), v_i.to(DT), IEEE)
            _hstore(o, o_i, r_i, m_i, cv, V, H, i_h)


@jit
def _bwd_dv_kernel(q, k, v, gkb, gkr, gks, gvb, gvr, gvs, u, oex, do, dh, dv, dbv, cu, chunk_seq, chunk_idx, scale,
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
    uu = _bonus(u, i_h, ck, K, USE_U)
    for j in range(C // BS):
        base_j = i_t * C + j * BS
        if base_j < L:
            t_j, m_j, r_j = _rows(base_j, ar, L, bos, eos, REVERSE)
            k_j = _htile(k, r_j, m_j, ck, K, H, i_h)
            q_j = _htile(q, r_j, m_j, ck, K, H, i_h) * scale
            if GK > 0:
                g_j = _gtile(gkr, r_j, m_j, ck, K, H, i_h, GK)
                ke = _decay(k_j, _gtile(gks, r_j, m_j, ck, K, H, i_h, GK), m_j)
            else:
                g_j = 0.  # unused
                ke = k_j
            dv_j = _mm(ke.to(DT), dhs.to(DT), IEEE)
            if GV:
                gv_j = _htile(gvr, r_j, m_j, cv, V, H, i_h)
                dv_j = _decay(dv_j, _htile(gvs, r_j, m_j, cv, V, H, i_h), m_j)
                # the last token's final-state path is kept out of the value-gate gradient (see dqk kernel)
                dv_last = tl.where((t_j == L - 1)[:, None], dv_j, 0.)
            for i in range(j + 1, C // BS):
                base_i = i_t * C + i * BS
                if base_i < L:
                    t_i, m_i, r_i = _rows(base_i, ar, L, bos, eos, REVERSE)
                    r_ref = phys_row(base_i - 1, bos, eos, REVERSE)
                    q_i = _htile(q, r_i, m_i, ck, K, H, i_h) * scale
                    if GK > 0:
                        qr = _decay(q_i, _lpre(_gtile(gkr, r_i, m_i, ck, K, H, i_h, GK), USE_U, GK, BS), m_i)
                        if i == j + 1:
                            kr = k_j * tl.exp(_lsuf(g_j, GK, BS))
                        else:
                            kr = k_j * tl.exp(_grow(gkb, r_ref, ck, K, H, i_h, GK)
                                              - _gtile(gkb, r_j, m_j, ck, K, H, i_h, GK))
                    else:
                        qr = q_i
                        kr = k_j
                    A = _mm(qr.to(DT), tl.trans(kr.to(DT)), IEEE)
                    do_i = _htile(do, r_i, m_i, cv, V, H, i_h)
                    if GV:
                        dd = _decay(do_i, _lpre(_htile(gvr, r_i, m_i, cv, V, H, i_h), False, 2, BS), m_i)
                        if i == j + 1:
                            fv = tl.exp(_lsuf(gv_j, 2, BS))
                        else:
                            fv = tl.exp(_hrow(gvb, r_ref, cv, V, H, i_h)[None, :]
                                        - _htile(gvb, r_j, m_j, cv, V, H, i_h))
                        dv_j += fv * _mm(tl.trans(A.to(DT)), dd.to(DT), IEEE)
                    else:
                        dv_j += _mm(tl.trans(A.to(DT)), do_i.to(DT), IEEE)
            # diagonal
            A = _diag_block_scores(q_j, k_j, g_j, uu, k, gkr, base_j, t_j, m_j, r_j, L, bos, eos, ck, K, H, i_h,
                                   BS, GK, USE_U, REVERSE, DT, IEEE)
            do_j = _htile(do, r_j, m_j, cv, V, H, i_h)
            if GV:
                # value-gate gradient o * do - v * dv without the t == s terms (they cancel exactly: oex from the
                # forward, strict pairs here), and without the last token's final-state path
                dv_j += _diag_gmmT(A, do, 0, do, 1.0, gvr, base_j, L, bos, eos, cv, V, H, i_h, BS, BV, True, False,
                                    REVERSE, False)
                oex_j = _htile(oex, r_j, m_j, cv, V, H, i_h)
                v_j = _htile(v, r_j, m_j, cv, V, H, i_h)
                _hstore(dbv, oex_j * do_j - v_j * (dv_j - dv_last), r_j, m_j, cv, V, H, i_h)
                a_tt = tl.sum(tl.where(ar[:, None] == ar[None, :], A, 0.), axis=1)
                dv_j += a_tt[:, None] * do_j
            else:
                dv_j += _mm(tl.trans(A.to(DT)), do_j.to(DT), IEEE)
            _hstore(dv, dv_j, r_j, m_j, cv, V, H, i_h)


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


@triton.jit
def _bwd_diag_terms(do, v, gvr, r_m, m_m, base_m, t_m, L, bos, eos, cv, V, H, i_h, dov, dA_tt,
                    BS: tl.constexpr, GV: tl.constexpr, USE_U: tl.constexpr, ADJ: tl.constexpr,
                    REVERSE: tl.constexpr, IEEE: tl.constexpr, DT: tl.constexpr):
    """One value block of a diagonal sub-block's dA (the dq and dk kernels): (do and v tiles, dA without the pairs
    whose gate factor is exp(0), dov, dA_tt). Those pairs cancel exactly in q * dq - k * dk and are added after the
    gate gradient is taken: the t == s terms (their do . v summed into dov with the bonus, else dA[t, t] into
    dA_tt), and with the bonus (ADJ) the pairs (t, t - 1)."""
    ar = tl.arange(0, BS)
    do_m = _htile(do, r_m, m_m, cv, V, H, i_h)
    v_m = _htile(v, r_m, m_m, cv, V, H, i_h)
    dA = _bwd_diag_dA(do_m, v_m, v, gvr, base_m, t_m, m_m, L, bos, eos, cv, V, H, i_h, BS, GV, USE_U, REVERSE,
                      IEEE, DT)
    if USE_U:
        dov += tl.sum(do_m * v_m, axis=1)
    else:
        dA_tt += tl.sum(tl.where(ar[:, None] == ar[None, :], dA, 0.), axis=1)
    if ADJ:
        dA = tl.where(ar[None, :] == ar[:, None] - 1, 0., dA)
    return do_m, v_m, dA, dov, dA_tt


# dq and dk: two kernels, each walking the sub-blocks of one chunk. Dynamic loops (not unrolled) keep one
# sub-block's tiles live at a time; tiles needed only at the end of a sub-block are loaded there. Each term (inter-
# chunk, off-diagonal sub-blocks, diagonal) has a loop over V blocks of its own, on purpose: Triton picks the warp
# layout of a tl.dot from the dots connected to it *within one region*; in one shared loop body the [BS, BS]
# diagonal dot pulled the [BS, BK] @ [BK, BV] state dot onto warpsPerCTA [4, 1], where with BS = 16 rows every warp
# computes the whole product and holds the whole fp32 state tile (128 registers per thread; see
# docs/benchmarks/recurrent_gla.md for the spills a single dq/dk kernel had).
@jit
def _bwd_dq_kernel(q, k, v, gkb, gkr, gvb, gvr, u, h, do, dq, dbk, dbq, yq, cu, chunk_seq, chunk_idx,
                   scale, N, NT, H, K, V, NV,
                   C: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   GK: tl.constexpr, GV: tl.constexpr, USE_U: tl.constexpr, ADJ: tl.constexpr,
                   REVERSE: tl.constexpr, VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    """dq, and the query half of the key-gate gradient, q * dq (fp32), into dbk (and dbq with the bonus):
    inter-chunk term from h, earlier sub-blocks j < mb, diagonal sub-block. The gate half leaves out the pairs
    whose gate factor is exp(0) (they cancel exactly in q * dq - k * dk): t == s, and with the bonus (ADJ)
    (t, t - 1), the chunk's first row taking its inter term without the previous token from yq (_fwd_h)."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    ck = tl.arange(0, BK)
    ar = tl.arange(0, BS)
    if ADJ:
        yv = _vblock_sum(yq, hc, NV, H, i_h, ck, K)
    for mb in range(C // BS):
        base_m = i_t * C + mb * BS
        if base_m < L:
            t_m, m_m, r_m = _rows(base_m, ar, L, bos, eos, REVERSE)
            r_refm = phys_row(tl.maximum(base_m - 1, 0), bos, eos, REVERSE)
            dq_t = tl.zeros([BS, BK], dtype=tl.float32)
            dov = tl.zeros([BS], dtype=tl.float32)
            dA_tt = tl.zeros([BS], dtype=tl.float32)
            # inter-chunk term: (do_t exp(bv_t)) @ h^T, times exp(b_t) (b_t: chunk prefix; exclusive with the bonus)
            for iv in range(tl.cdiv(V, BV)):
                cv = iv * BV + tl.arange(0, BV)
                hs = _state_tile(h, hc, H, i_h, ck, cv, K, V)
                dd = _htile(do, r_m, m_m, cv, V, H, i_h)
                if GV:
                    dd = dd * tl.exp(_htile(gvb, r_m, m_m, cv, V, H, i_h))
                dq_t += _mm(dd.to(DT), tl.trans(hs.to(DT)), IEEE)
            if GK > 0:
                dq_t = dq_t * tl.exp(_qgate(gkb, gkr, r_m, m_m, ck, K, H, i_h, GK, USE_U))
            if ADJ:
                first = (t_m == i_t * C)[:, None]
                dq_x = tl.where(first, dq_t, 0.)
                dq_t = tl.where(first, yv[None, :], dq_t)
                m_p = m_m & (t_m > i_t * C)
                r_p = phys_row(t_m - 1, bos, eos, REVERSE)
                a_p = tl.zeros([BS], dtype=tl.float32)
            # earlier sub-blocks j < mb (reference row: last row of sub-block mb-1)
            if mb > 0:
                for iv in range(tl.cdiv(V, BV)):
                    cv = iv * BV + tl.arange(0, BV)
                    do_m = _htile(do, r_m, m_m, cv, V, H, i_h)
                    if GV:
                        ddr = _decay(do_m, _lpre(_htile(gvr, r_m, m_m, cv, V, H, i_h), False, 2, BS), m_m)
                        bv_rm = _hrow(gvb, r_refm, cv, V, H, i_h)[None, :]
                    else:
                        ddr = do_m
                    if GK > 0:
                        bk_rm = _grow(gkb, r_refm, ck, K, H, i_h, GK)
                    else:
                        bk_rm = 0.
                    dq_off = tl.zeros([BS, BK], dtype=tl.float32)
                    for j in range(mb):
                        t_j, m_j, r_j = _rows(i_t * C + j * BS, ar, L, bos, eos, REVERSE)
                        v_j = _htile(v, r_j, m_j, cv, V, H, i_h)
                        if GV:
                            v_j = _to_ref(v_j, gvr, gvb, bv_rm, r_j, m_j, j == mb - 1, cv, V, H, i_h, 2, BS)
                        dA = _mm(ddr.to(DT), tl.trans(v_j.to(DT)), IEEE)
                        if ADJ:
                            dA = tl.where((ar[:, None] == 0) & (ar[None, :] == BS - 1) & (j == mb - 1), 0., dA)
                        k_j = _to_ref(_htile(k, r_j, m_j, ck, K, H, i_h), gkr, gkb, bk_rm, r_j, m_j,
                                      j == mb - 1, ck, K, H, i_h, GK, BS)
                        dq_off += _mm(dA.to(DT), k_j.to(DT), IEEE)
                    if GK > 0:
                        g_m = _gtile(gkr, r_m, m_m, ck, K, H, i_h, GK)
                        dq_t += _decay(dq_off, _lpre(g_m, USE_U, GK, BS), m_m)
                    else:
                        dq_t += dq_off
            # diagonal sub-block
            for iv in range(tl.cdiv(V, BV)):
                cv = iv * BV + tl.arange(0, BV)
                do_m, v_m, dA, dov, dA_tt = _bwd_diag_terms(do, v, gvr, r_m, m_m, base_m, t_m, L, bos, eos, cv, V,
                                                            H, i_h, dov, dA_tt, BS, GV, USE_U, ADJ, REVERSE, IEEE,
                                                            DT)
                if ADJ:
                    a_p += tl.sum(do_m * _htile(v, r_p, m_p, cv, V, H, i_h), axis=1)
                if GK == 2:
                    if USE_U:
                        gT = _gtile(gkr, r_m, m_m, ck, K, H, i_h, GK)
                    else:
                        gT = tl.zeros([BS, BK], dtype=tl.float32)
                    dq_t += _diag_gmm(dA, k, 0, gT, k, gkr, base_m, t_m, m_m, L, bos, eos, ck, K, H, i_h, BS, BK,
                                      True, REVERSE, False)
                else:
                    if GK == 1:
                        dA = dA * _diag_decay(_gvec(gkr, r_m, m_m, H, i_h), t_m, m_m, BS, USE_U, True)
                    else:
                        dA = tl.where((t_m[:, None] > t_m[None, :]) & m_m[:, None], dA, 0.)
                    k_m = _htile(k, r_m, m_m, ck, K, H, i_h)
                    dq_t += _mm(dA.to(DT), k_m.to(DT), IEEE)
            if GK > 0:
                dbq_t = _htile(q, r_m, m_m, ck, K, H, i_h) * scale * dq_t
                if GK == 2:
                    _hstore(dbk, dbq_t, r_m, m_m, ck, K, H, i_h)
                    if USE_U:
                        _hstore(dbq, dbq_t, r_m, m_m, ck, K, H, i_h)
                else:
                    tl.store(dbk + r_m.to(tl.int64) * H + i_h, tl.sum(dbq_t, axis=1), mask=m_m)
                    if USE_U:
                        tl.store(dbq + r_m.to(tl.int64) * H + i_h, tl.sum(dbq_t, axis=1), mask=m_m)
            if ADJ:
                # the chunk's first row has no intra-chunk term: its dq is the full inter term
                dq_t = tl.where(first, dq_x, dq_t) + a_p[:, None] * _htile(k, r_p, m_p, ck, K, H, i_h)
            dq_t += _diag_self_term(dov, dA_tt, _htile(k, r_m, m_m, ck, K, H, i_h), u, i_h, ck, K, USE_U)
            _hstore(dq, dq_t * scale, r_m, m_m, ck, K, H, i_h)


@jit
def _bwd_dk_kernel(q, k, v, gkb, gkr, gks, gvb, gvr, gvs, u, do, dh, dk, dbk, zk, cu, chunk_seq, chunk_idx,
                   scale, N, NT, H, K, V, NV,
                   C: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   GK: tl.constexpr, GV: tl.constexpr, USE_U: tl.constexpr, ADJ: tl.constexpr,
                   REVERSE: tl.constexpr, VARLEN: tl.constexpr, IEEE: tl.constexpr, LOWP: tl.constexpr):
    """dk: inter-chunk term from dh, later sub-blocks i > mb, diagonal sub-block; and the key-gate gradient
    db = q * dq - k * dk, completing dbk, which holds q * dq from _bwd_dq_kernel (launched before), without the
    pairs _bwd_dq_kernel leaves out; the last token's final-state path (and with the bonus, ADJ, the chunk's last
    row's pair with the next chunk, that row taking its inter term from zk (_bwd_dh)) likewise."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    DT = q.dtype.element_ty if LOWP else tl.float32
    L = eos - bos
    ck = tl.arange(0, BK)
    ar = tl.arange(0, BS)
    if ADJ:
        t_x = tl.minimum(i_t * C + C, L) - 1
        zv = _vblock_sum(zk, hc, NV, H, i_h, ck, K)
    else:
        t_x = L - 1
    for mb in range(C // BS):
        base_m = i_t * C + mb * BS
        if base_m < L:
            t_m, m_m, r_m = _rows(base_m, ar, L, bos, eos, REVERSE)
            dk_t = tl.zeros([BS, BK], dtype=tl.float32)
            dov = tl.zeros([BS], dtype=tl.float32)
            dA_tt = tl.zeros([BS], dtype=tl.float32)
            # inter-chunk term: (v_s exp(bv_last - bv_s)) @ dh^T, times exp(b_last - b_s)
            for iv in range(tl.cdiv(V, BV)):
                cv = iv * BV + tl.arange(0, BV)
                dhs = _state_tile(dh, hc, H, i_h, ck, cv, K, V)
                vv = _htile(v, r_m, m_m, cv, V, H, i_h)
                if GV:
                    vv = _decay(vv, _htile(gvs, r_m, m_m, cv, V, H, i_h), m_m)
                dk_t += _mm(vv.to(DT), tl.trans(dhs.to(DT)), IEEE)
            if GK > 0:
                # the last token's final-state path (with the bonus: the chunk's last row's inter term), kept out
                # of the gate gradient (added to dk at the end)
                dk_last = tl.where((t_m == t_x)[:, None], dk_t, 0.)
                dk_t = dk_t * tl.exp(tl.where(m_m[:, None] & (t_m != t_x)[:, None],
                                              _gtile(gks, r_m, m_m, ck, K, H, i_h, GK), NEG_INF))
                if ADJ:
                    dk_t += tl.where((t_m == t_x)[:, None], zv[None, :], 0.)
                    m_n = (t_m + 1 < L) & (t_m < i_t * C + C - 1)
                    r_n = phys_row(t_m + 1, bos, eos, REVERSE)
                    a_n = tl.zeros([BS], dtype=tl.float32)
            # later sub-blocks i > mb (reference row: last row of sub-block i-1)
            for iv in range(tl.cdiv(V, BV)):
                cv = iv * BV + tl.arange(0, BV)
                v_m = _htile(v, r_m, m_m, cv, V, H, i_h)
                for i in range(mb + 1, C // BS):
                    base_i = i_t * C + i * BS
                    if base_i < L:
                        t_i, m_i, r_i = _rows(base_i, ar, L, bos, eos, REVERSE)
                        r_ref = phys_row(base_i - 1, bos, eos, REVERSE)
                        do_i = _htile(do, r_i, m_i, cv, V, H, i_h)
                        if GV:
                            do_i = _decay(do_i, _lpre(_htile(gvr, r_i, m_i, cv, V, H, i_h), False, 2, BS), m_i)
                            if i == mb + 1:
                                vr = v_m * tl.exp(_lsuf(_htile(gvr, r_m, m_m, cv, V, H, i_h), 2, BS))
                            else:
                                vr = v_m * tl.exp(_hrow(gvb, r_ref, cv, V, H, i_h)[None, :]
                                                  - _htile(gvb, r_m, m_m, cv, V, H, i_h))
                        else:
                            vr = v_m
                        dA = _mm(do_i.to(DT), tl.trans(vr.to(DT)), IEEE)
                        if ADJ:
                            dA = tl.where((ar[:, None] == 0) & (ar[None, :] == BS - 1) & (i == mb + 1), 0., dA)
                        q_i = _htile(q, r_i, m_i, ck, K, H, i_h) * scale
                        if GK > 0:
                            q_i = _decay(q_i, _lpre(_gtile(gkr, r_i, m_i, ck, K, H, i_h, GK), USE_U, GK, BS), m_i)
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
                do_m, v_m, dA, dov, dA_tt = _bwd_diag_terms(do, v, gvr, r_m, m_m, base_m, t_m, L, bos, eos, cv, V,
                                                            H, i_h, dov, dA_tt, BS, GV, USE_U, ADJ, REVERSE, IEEE,
                                                            DT)
                if ADJ:
                    a_n += tl.sum(_htile(do, r_n, m_n, cv, V, H, i_h) * v_m, axis=1)
                if GK == 2:
                    dk_t += _diag_gmmT(dA, q, 0, q, scale, gkr, base_m, L, bos, eos, ck, K, H, i_h, BS, BK, True,
                                       USE_U, REVERSE, False)
                else:
                    if GK == 1:
                        dA = dA * _diag_decay(_gvec(gkr, r_m, m_m, H, i_h), t_m, m_m, BS, USE_U, True)
                    else:
                        dA = tl.where((t_m[:, None] > t_m[None, :]) & m_m[:, None], dA, 0.)
                    q_m = _htile(q, r_m, m_m, ck, K, H, i_h) * scale
                    dk_t += _mm(tl.trans(dA.to(DT)), q_m.to(DT), IEEE)
            if GK > 0:
                kdk = _htile(k, r_m, m_m, ck, K, H, i_h) * dk_t
                if GK == 2:
                    db_t = _htile(dbk, r_m, m_m, ck, K, H, i_h) - kdk
                    _hstore(dbk, db_t, r_m, m_m, ck, K, H, i_h)
                else:
                    db_t = _gvec(dbk, r_m, m_m, H, i_h) - tl.sum(kdk, axis=1)
                    tl.store(dbk + r_m.to(tl.int64) * H + i_h, db_t, mask=m_m)
                if ADJ:
                    # the chunk's last row has no intra-chunk term: its dk is the full inter term
                    dk_t = tl.where((t_m == t_x)[:, None], dk_last, dk_t) \
                        + a_n[:, None] * _htile(q, r_n, m_n, ck, K, H, i_h) * scale
                else:
                    dk_t += dk_last
            q_m = _htile(q, r_m, m_m, ck, K, H, i_h) * scale
            dk_t += _diag_self_term(dov, dA_tt, q_m, u, i_h, ck, K, USE_U)
            _hstore(dk, dk_t, r_m, m_m, ck, K, H, i_h)


# ----------------------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------------------
def _fwd_sub(q, k, v, gkb, gk, gvb, gv, u, h, scale, meta, GK, reverse, ieee, lowp):
    """Forward chunk kernel of the sub-block path: (o, oex), oex (fp32, value gates only, else None): o without
    its t == s terms, what the backward's dL/dgv reads."""
    K, V = q.shape[-1], v.shape[-1]
    o = alloc(v.shape, v.dtype, v.device)
    oex = alloc(v.shape, torch.float32, v.device) if gv is not None else None
    BK, BV = _pow2(K), min(64, _pow2(V))
    grid = (cdiv(V, BV), meta.nchunks, meta.nbh)
    _fwd_o_kernel[grid](q, k, v, _or(gkb, q), _or(gk, q), _or(gvb, v), _or(gv, v), _or(u, q), h, o, _or(oex, o),
                        meta.cu, meta.chunk_seq, meta.chunk_idx, scale, meta.N, meta.NT, meta.H, K, V,
                        C=meta.C, BS=SUB, BK=BK, BV=BV, GK=GK, GV=gv is not None, USE_U=u is not None,
                        REVERSE=reverse, VARLEN=meta.varlen, IEEE=_prec(ieee), LOWP=lowp,
                        **_launch_opts(K, 'fwd_o'))
    return o, oex


def _bwd_sub(q, k, v, gkb, gk, gks, gv, gvb, gvs, u, scale, h, dh, oex, do, meta, GK, reverse, ieee, lowp, yq=None,
             zk=None):
    """Backward chunk kernels that walk sub-blocks (the value-gate path): dv, dq, dk and the gate-gradient
    buffers (dbk, dbv, dbq)."""
    K, V = q.shape[-1], v.shape[-1]
    H = meta.H
    BK, BV = _pow2(K), min(64, _pow2(V))
    dv = alloc(v.shape, v.dtype, v.device)
    dbv = alloc(v.shape, torch.float32, v.device) if gv is not None else None
    gates = (_or(gkb, q), _or(gk, q), _or(gks, q), _or(gvb, v), _or(gv, v), _or(gvs, v), _or(u, q))
    _bwd_dv_kernel[(cdiv(V, BV), meta.nchunks, meta.nbh)](
        q, k, v, *gates, _or(oex, v), do, dh, dv, _or(dbv, v), meta.cu, meta.chunk_seq, meta.chunk_idx, scale,
        meta.N, meta.NT, H, K, V, C=meta.C, BS=SUB, BK=BK, BV=BV, GK=GK, GV=gv is not None,
        USE_U=u is not None, REVERSE=reverse, VARLEN=meta.varlen, IEEE=_prec(ieee),
        LOWP=_lowp(ieee) and gv is None, **_launch_opts(K, 'dv'))
    dq = alloc(q.shape, q.dtype, q.device)
    dk = alloc(k.shape, k.dtype, k.device)
    dbk = alloc(gk.shape, torch.float32, q.device) if gk is not None else None
    dbq = alloc(gk.shape, torch.float32, q.device) if (gk is not None and u is not None) else None
    # dq first: it writes q * dq into dbk, which the dk kernel completes to q * dq - k * dk
    adj = yq is not None
    NV = yq.shape[1] if adj else 0
    common = dict(C=meta.C, BS=SUB, BK=BK, BV=BV, GK=GK, GV=gv is not None, USE_U=u is not None, ADJ=adj,
                  REVERSE=reverse, VARLEN=meta.varlen, IEEE=_prec(ieee), LOWP=lowp)
    _bwd_dq_kernel[(meta.nchunks, meta.nbh)](
        q, k, v, _or(gkb, q), _or(gk, q), _or(gvb, v), _or(gv, v), _or(u, q), h, do, dq, _or(dbk, q), _or(dbq, q),
        _or(yq, h), meta.cu, meta.chunk_seq, meta.chunk_idx, scale, meta.N, meta.NT, H, K, V, NV, **common,
        **_launch_opts(K, 'dqk', 'dq'))
    _bwd_dk_kernel[(meta.nchunks, meta.nbh)](
        q, k, v, *gates, do, dh, dk, _or(dbk, q), _or(zk, dh),
        meta.cu, meta.chunk_seq, meta.chunk_idx, scale, meta.N, meta.NT, H, K, V, NV, **common,
        **_launch_opts(K, 'dqk', 'dk'))
    return dq, dk, dv, dbk, dbv, dbq
