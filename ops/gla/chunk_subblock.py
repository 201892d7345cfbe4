"""Sub-block path of the gated linear attention core (value gates, GSA's first pass; every call with
``kernel_options(gla_a_path=False)``): each chunk kernel walks the sub-blocks of its chunk and re-forms the
intra-chunk scores (see ``chunk.py`` for the algorithm)."""
import torch
import triton
import triton.language as tl

from ..common.jit import chunk_info, load_row, load_tile, phys_row, store_tile
from ..common.options import alloc
from .blocks import (NEG_INF, _diag_block_scores, _diag_decay, _diag_gmm, _diag_gmmT, _diag_scores,
                     _diag_self_term, _grow, _gtile, _gvec, _lpre, _lsuf, _mm, _state_tile, _to_ref, _vblock_sum)
from .launch import SUB, _launch_opts, _lowp, _or, _pow2, _prec


@triton.jit
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
                                 V, H, i_h, BS, BV, True, REVERSE)
                store_tile(oex, o_i, r_i, m_i, cv, V, H * V, i_h * V)
                a_tt = tl.sum(tl.where(ar[:, None] == ar[None, :], A, 0.), axis=1)
                o_i += a_tt[:, None] * load_tile(v, r_i, m_i, cv, V, H * V, i_h * V)
            else:
                v_i = load_tile(v, r_i, m_i, cv, V, H * V, i_h * V)
                o_i += _mm(A.to(DT), v_i.to(DT), IEEE)
            store_tile(o, o_i, r_i, m_i, cv, V, H * V, i_h * V)


@triton.jit
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
                # value-gate gradient o * do - v * dv without the t == s terms (they cancel exactly: oex from the
                # forward, strict pairs here), and without the last token's final-state path
                dv_j += _diag_gmmT(A, do, 1.0, gvr, base_j, L, bos, eos, cv, V, H, i_h, BS, BV, True, False, REVERSE)
                oex_j = load_tile(oex, r_j, m_j, cv, V, H * V, i_h * V)
                v_j = load_tile(v, r_j, m_j, cv, V, H * V, i_h * V)
                store_tile(dbv, oex_j * do_j - v_j * (dv_j - dv_last), r_j, m_j, cv, V, H * V, i_h * V)
                a_tt = tl.sum(tl.where(ar[:, None] == ar[None, :], A, 0.), axis=1)
                dv_j += a_tt[:, None] * do_j
            else:
                dv_j += _mm(tl.trans(A.to(DT)), do_j.to(DT), IEEE)
            store_tile(dv, dv_j, r_j, m_j, cv, V, H * V, i_h * V)


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
# computes the whole product and holds the whole fp32 state tile (128 registers per thread; see
# docs/benchmarks/recurrent_gla.md for the spills a single dq/dk kernel had).
@triton.jit
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
                        if ADJ:
                            dA = tl.where((ar[:, None] == 0) & (ar[None, :] == BS - 1) & (j == mb - 1), 0., dA)
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
                if ADJ:
                    # the pairs (t, t - 1), likewise (bonus form)
                    dA = tl.where(ar[None, :] == ar[:, None] - 1, 0., dA)
                    a_p += tl.sum(do_m * load_tile(v, r_p, m_p, cv, V, H * V, i_h * V), axis=1)
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
            if ADJ:
                # the chunk's first row has no intra-chunk term: its dq is the full inter term
                dq_t = tl.where(first, dq_x, dq_t) + a_p[:, None] * load_tile(k, r_p, m_p, ck, K, H * K, i_h * K)
            dq_t += _diag_self_term(dov, dA_tt, load_tile(k, r_m, m_m, ck, K, H * K, i_h * K), u, i_h, ck, K, USE_U)
            store_tile(dq, dq_t * scale, r_m, m_m, ck, K, H * K, i_h * K)


@triton.jit
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
                        if ADJ:
                            dA = tl.where((ar[:, None] == 0) & (ar[None, :] == BS - 1) & (i == mb + 1), 0., dA)
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
                if ADJ:
                    dA = tl.where(ar[None, :] == ar[:, None] - 1, 0., dA)
                    a_n += tl.sum(load_tile(do, r_n, m_n, cv, V, H * V, i_h * V) * v_m, axis=1)
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
                if ADJ:
                    # the chunk's last row has no intra-chunk term: its dk is the full inter term
                    dk_t = tl.where((t_m == t_x)[:, None], dk_last, dk_t) \
                        + a_n[:, None] * load_tile(q, r_n, m_n, ck, K, H * K, i_h * K) * scale
                else:
                    dk_t += dk_last
            q_m = load_tile(q, r_m, m_m, ck, K, H * K, i_h * K) * scale
            dk_t += _diag_self_term(dov, dA_tt, q_m, u, i_h, ck, K, USE_U)
            store_tile(dk, dk_t, r_m, m_m, ck, K, H * K, i_h * K)


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
    grid = (triton.cdiv(V, BV), meta.nchunks, meta.nbh)
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
    _bwd_dv_kernel[(triton.cdiv(V, BV), meta.nchunks, meta.nbh)](
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
