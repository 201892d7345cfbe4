"""``@triton.jit`` building blocks shared by both chunk paths of the gated linear attention kernels: gate tiles,
the operand-precision switch, and the exact arithmetic of sub-blocks (see ``chunk.py`` for the algorithm)."""
import triton
import triton.language as tl

from ..common.jit import chunk_info, load_row, load_tile, pair_diff, phys_row, store_tile

NEG_INF = tl.constexpr(float('-inf'))


@triton.jit
def _rows(t0, ar, L, bos, eos, REVERSE: tl.constexpr):
    """Rows ``t0 + ar`` of a sequence of ``L`` tokens ``[bos, eos)``: (logical times, mask t < L, physical rows)."""
    t = t0 + ar
    m = t < L
    return t, m, phys_row(t, bos, eos, REVERSE)


@triton.jit
def _chunk_rows(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, C: tl.constexpr, REVERSE: tl.constexpr,
                VARLEN: tl.constexpr):
    """All rows of chunk program (i_c, i_bh) (grid of ``ChunkTable``): (head, chunk index in its sequence, chunk
    row of the state buffers, bos, eos, sequence length, offsets 0..C-1, logical times, mask, physical rows)."""
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    L = eos - bos
    ac = tl.arange(0, C)
    t, m, r = _rows(i_t * C, ac, L, bos, eos, REVERSE)
    return i_h, i_t, hc, bos, eos, L, ac, t, m, r


@triton.jit
def _htile(ptr, r, m, c, D, H, i_h):
    """fp32 tile [rows r (mask m), columns c < D] of head ``i_h`` of a ``[rows, H * D]`` tensor."""
    return load_tile(ptr, r, m, c, D, H * D, i_h * D)


@triton.jit
def _hrow(ptr, r, c, D, H, i_h):
    """fp32 vector of columns c < D of row r, head ``i_h``, of a ``[rows, H * D]`` tensor."""
    return load_row(ptr, r, c, D, H * D, i_h * D)


@triton.jit
def _hstore(ptr, x, r, m, c, D, H, i_h):
    store_tile(ptr, x, r, m, c, D, H * D, i_h * D)


@triton.jit
def _decay(x, g, m):
    """``x * exp(g)`` on the rows of mask ``m``, 0 on the others (``g``: sums of log gates, <= 0)."""
    return x * tl.exp(tl.where(m[:, None], g, NEG_INF))


@triton.jit
def _bonus(u, i_h, ck, K, USE_U: tl.constexpr):
    """The RWKV6 bonus of head ``i_h``, fp32 [BK]; 0. (unused) without it."""
    if USE_U:
        uu = tl.load(u + i_h * K + ck, mask=ck < K, other=0.).to(tl.float32)
    else:
        uu = 0.
    return uu


@triton.jit
def _gtile(ptr, r, m, c, D, H, i_h, G: tl.constexpr):
    """Gate tile: [BS, BD] for per-dimension gates (G == 2), [BS, 1] for one gate per head (G == 1)."""
    if G == 2:
        x = _htile(ptr, r, m, c, D, H, i_h)
    else:
        x = tl.load(ptr + r.to(tl.int64) * H + i_h, mask=m, other=0.).to(tl.float32)[:, None]
    return x


@triton.jit
def _qgate(gkb, gkr, r, m, c, K, H, i_h, GK: tl.constexpr, USE_U: tl.constexpr):
    """The query side's chunk prefix sums of log key gates (tile of ``_gtile``): inclusive, exclusive with the
    bonus (the current token enters through u, not through the decayed state)."""
    bq = _gtile(gkb, r, m, c, K, H, i_h, GK)
    if USE_U:
        bq = bq - _gtile(gkr, r, m, c, K, H, i_h, GK)
    return bq


@triton.jit
def _grow(ptr, r, c, D, H, i_h, G: tl.constexpr):
    """Gate row: [1, BD] for G == 2, a scalar for G == 1."""
    if G == 2:
        x = _hrow(ptr, r, c, D, H, i_h)[None, :]
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
def _vblock_sum(ptr, hc, NV, H, i_h, ck, K):
    """[BK] sum over the NV value blocks of chunk row ``hc``, head ``i_h``, of a ``[chunks, NV, H, K]`` buffer of
    the state kernels' partial sums (yq / zk)."""
    x = tl.zeros_like(ck).to(tl.float32)
    for iv in range(NV):
        x += tl.load(ptr + ((hc * NV + iv) * H + i_h).to(tl.int64) * K + ck, mask=ck < K, other=0.)
    return x


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
def _diag_col(acc, g_next, gT, R, gR, s, ar, base, t_i, m_i, seq_len, bos, eos, c, D, H, i_h,
              STRICT: tl.constexpr, REVERSE: tl.constexpr):
    """Column s of a diagonal sub-block, walked from the diagonal outwards: (the exponent sums ``acc`` advanced by
    the log gates of row s + 1, ``g_next``; R's row s; the gates' row s; exp(sum_{r in (s, t]} g[r] - gT[t]) for
    s <= t (s < t), 0 elsewhere)."""
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
    return acc, R_s, g_s, tl.exp(tl.where(keep[:, None], acc - gT, NEG_INF))


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
        acc, R_s, g_s, e = _diag_col(acc, g_next, gT, R, gR, s, ar, base, t_i, m_i, seq_len, bos, eos, c, D, H, i_h,
                                     STRICT, REVERSE)
        a = tl.sum(L_ * R_s[None, :] * e, axis=1)
        M = tl.where(ar[None, :] == s, a[:, None], M)
        g_next = g_s
    return M


@triton.jit
def _diag_gmm(M, Mp, ms, gT, R, gR, base, t_i, m_i, seq_len, bos, eos, c, D, H, i_h,
              BS: tl.constexpr, BD: tl.constexpr, STRICT: tl.constexpr, REVERSE: tl.constexpr, LOADM: tl.constexpr):
    """Y[t, d] = sum_s M[t, s] R[s, d] exp(sum_{r in (s, t]} g[r, d] - gT[t, d]) on a diagonal sub-block. With LOADM,
    M's columns are read from memory (``Mp``: its first column, row stride ``ms``) instead of cut out of the tile."""
    ar = tl.arange(0, BS)
    if LOADM:
        r_i = phys_row(base + ar, bos, eos, REVERSE).to(tl.int64) * ms
    Y = tl.zeros([BS, BD], dtype=tl.float32)
    acc = tl.zeros([BS, BD], dtype=tl.float32)
    g_next = tl.zeros([BD], dtype=tl.float32)
    for jj in range(BS):
        s = BS - 1 - jj
        acc, R_s, g_s, e = _diag_col(acc, g_next, gT, R, gR, s, ar, base, t_i, m_i, seq_len, bos, eos, c, D, H, i_h,
                                     STRICT, REVERSE)
        if LOADM:
            mcol = tl.load(Mp + r_i + s, mask=m_i, other=0.)
        else:
            mcol = tl.sum(tl.where(ar[None, :] == s, M, 0.), axis=1)
        Y += mcol[:, None] * R_s[None, :] * e
        g_next = g_s
    return Y


@triton.jit
def _diag_gmmT(M, Mp, ms, Lp, l_scale, gR, base, seq_len, bos, eos, c, D, H, i_h,
               BS: tl.constexpr, BD: tl.constexpr, STRICT: tl.constexpr, SHIFT: tl.constexpr,
               REVERSE: tl.constexpr, LOADM: tl.constexpr):
    """Z[s, d] = sum_t M[t, s] L[t, d] exp(sum_{r in (s, t]} g[r, d] (- g[t, d] if SHIFT)) for s <= t (s < t)
    on a diagonal sub-block. One outer product per row t: L's row is read from memory (times ``l_scale``), M's
    row is a column of M^T (a within-warp reduction; with LOADM read from memory as in ``_diag_gmm``); a sum over
    t inside a tile would cross warps every step."""
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
        if LOADM:
            mrow = tl.load(Mp + phys_row(tt, bos, eos, REVERSE).to(tl.int64) * ms + ar, mask=mt, other=0.)
        else:
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


@triton.jit
def _pair_decays(gk, ac, r, m, H, i_h, STRICT: tl.constexpr):
    """exp(b_t - b_s) over a chunk's rows (offsets ``ac``) for one log gate per head (``gk`` [rows, H]), b the
    chunk's inclusive prefix sums: on the pairs s <= t (s < t if STRICT) of valid rows, 0 elsewhere. The sums are
    taken in float64 and differenced as hi + lo float32 parts (``pair_diff``): a float32 prefix sum at strong gates
    (-20 a token, -1280 over a chunk) carries absolute errors of ~1e-4, which would be the relative error of every
    decayed pair and of the gate gradient they make."""
    b = tl.cumsum(tl.load(gk + r.to(tl.int64) * H + i_h, mask=m, other=0.).to(tl.float64), 0)
    if STRICT:
        pairs = (ac[None, :] < ac[:, None]) & m[:, None] & m[None, :]
    else:
        pairs = (ac[None, :] <= ac[:, None]) & m[:, None] & m[None, :]
    return tl.exp(tl.where(pairs, pair_diff(b, b), NEG_INF))
