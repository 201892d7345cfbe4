"""Chunked Triton kernels of the (gated) delta rule, forward and backward, in one ``torch.autograd.Function``.

Per chunk of BT = 64 tokens (chunk-local cumulative log gates G, state H0 [K, V] at the chunk start):

    A  = strict_lower(diag(b) K K^T * exp(G_i - G_j))        T = (I + A)^-1   (product of nilpotent powers)
    W  = T diag(b exp(G)) K        U~ = T diag(b) V           U = U~ - W H0
    O  = scale (diag(exp(G)) Q H0 + (Q K^T * exp(G_r - G_i))_{i<=r} U)
    H_C = exp(G_C) H0 + (diag(exp(G_C - G)) K)^T U

Kernels (forward):  ``_prep`` (parallel over chunks: G, T, W, U~), ``_state`` (sequential over chunks per
sequence and V block: H0 of every chunk, U, final state), ``_out`` (parallel over chunks: O).
Backward: ``_dstate`` (sequential, right to left: dU = dL/dU and dH at every chunk end, dH0), ``_grads_wy``
(parallel: everything that flows through T: dv, dbeta and parts of dk, dg) and ``_grads_qk`` (parallel: dq and
the rest of dk, dg). Backward identities used (derived from the forward above): dVb = T^T dU,
dA = -strict_lower(dVb U^T), dKb = -dVb H0^T, where Vb = diag(b) V and Kb = diag(b exp(G)) K.

Every sequence is a row range of the flattened [B*N, H, .] tensors (``cu_seqlens`` boundaries; without it, B
equal ranges). ``reverse=True`` maps logical position p of a sequence to row eos-1-p in every load and store:
no flipped copy is made. No exponential of a positive number is ever used where it could overflow: decays are
exp(G_r - G_i) over pairs with r >= i (masked elsewhere before the exp), so log gates of -20 per token underflow
to zero cleanly. The chunk-local cumulative gates G are kept in float64 (a few numbers per token) and their
differences are formed in float32 from hi + lo parts (``_pdiff``) just before the exp: in float32 a cumsum
that reaches -600 after strong decays carries an absolute error of ~4e-5, which would become the relative error
of every weak decay after it.

Precision (:func:`dot_precision`): arithmetic is float32; with 16-bit inputs the intermediates W, U~, U and the
chunk states are stored in the input dtype (``kernel_options(delta_rule_residuals='input')``, the default, as fla
keeps them; ``'fp32'`` keeps them in float32), T and the gradients' buffers in float32. fp32 inputs use
``input_precision='ieee'`` in every ``tl.dot``; bf16 / fp16 inputs use tf32 tensor-core dots (``_out`` at K <= 64:
16-bit operands, OUT_PREC_SMALL_K), and ``_dstate`` at 64 < K <= 128 runs them
over K in two halves (``split_k``, the K <= 64 tile shapes): its full-K tf32 build dies with an illegal memory
access at K = V = 128 on Hopper (triton 3.6, session 11); the halves run clean and within float64 tolerance
there and at every 16-bit K = 96 / 128 case of the GPU sweep that was reached (17 of 22, N = 1 included,
session 12) at ~1.2x the forward's cost per token (fwd+bwd 5.1 ms at B8 H6 N4096 K = V = 128 against 34 for
'ieee'). The faster 16-bit dots over halves fault at fp16 K = 96 N = 1 (docs/benchmarks/recurrent_delta.md,
"K > 64 in 16-bit"). Above K = 128 (a 256-wide K block, never run with tf32 on the GPU) every kernel uses 'ieee'.
``kernel_options(launch={'delta_rule_<kernel>': {'precision': ..., 'split_k': ...}})`` overrides one kernel.
"""
from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..common import PackedSeqs, alloc, cdiv, current_options, kernel_options, next_power_of_2
from ..common.launch import jit
from ..common.options import TRITON_LAUNCH_KEYS, declare_launch
from ..common.jit import chunk_info as _chunk_at, dot as _dot, dot_prec, pair_diff as _pdiff, phys_row
from ..common.jit import seq_info as _seq_at

BT = 64                  # chunk length (the blocked inversion in ``_prep_kernel`` is written for 4 x 16 rows)
MAX_HEAD_DIM_K = 256     # one [BT, K] tile of q / k / W per program
MAX_TF32_K = 64          # 16-bit inputs with K above this run _dstate over K in two halves (module docstring)
# kernels whose tf32 build ran clean on Hopper at K = V = 128 in bf16 and passed float64 checks at N = 1031, up to
# the K block that was run (K <= 128: one 128-wide block); _dstate's tf32 build is the one that faults there
# (illegal memory access, H100, session 11); over K in two halves it runs clean (session 12)
TF32_ANY_K = ('prep', 'state', 'out', 'grads_wy', 'grads_qk')
MAX_TF32_K_CHECKED = 128
MIN_PROGRAMS_STATE = 96  # the sequential kernels narrow their V block until S * H * V blocks reach this
# Launch settings per kernel (measurements behind them: docs/benchmarks/recurrent_delta.md).
LAUNCH = MappingProxyType({name: MappingProxyType(dict(num_warps=w, num_stages=1)) for name, w in (
    ('prep', 8), ('state', 4), ('out', 8), ('dlocal', 4), ('dstate', 8), ('grads_wy', 8), ('grads_qk', 8))})
# _dstate's chunk-local terms (the causal q.k product with do, and q^T do) from the parallel _dlocal kernel
# instead of inside the sequential loop, for 16-bit inputs up to this K (timed at K = 64, float64-checked up to
# 192 on Hopper, session 18); above it and for fp32 _dlocal spills more than the in-loop path saves
DSTATE_LOCAL_MAX_K = 128
# 16-bit inputs at K <= 64 (MAX_TF32_K): more, smaller _prep programs (all spill some at 255 registers; timed and
# float64-checked only there: H100, session 17) and the sequential kernels' loads pipelined over two stages
# (no spill, 89 / 56 KiB shared; H100, session 18)
PREP_WARPS_SMALL_K = 2
# _prep's W and U~ from T read back whole (launch 'delta_rule_prep' tile_w; session 20, CPU-tested, untimed)
PREP_TILE_W = False
# and _out at 4 warps with its dots on 16-bit operands (fp32 accumulation): fwd -29 % / -25 % at N4096 / 16384
# with 16-bit intermediates (H100, session 20; float64 checks within the 16-bit tolerance)
OUT_WARPS_SMALL_K = 4
OUT_PREC_SMALL_K = 'input'
SEQ_STAGES_SMALL_K = 2
# dots: fp32 operands as 'ieee' / 'tf32' / 'tf32x3', or 'input': both operands cast to the 16-bit input dtype
PRECISIONS = ('ieee', 'tf32', 'tf32x3', 'input')
_INPUT_PREC = {torch.bfloat16: 'bf16', torch.float16: 'fp16'}
# the sequential kernels also take block_v (their V block: a power of two >= 16; default _bv_state's), and
# _dstate split_k (K in two halves) and local (default: DSTATE_LOCAL_MAX_K)
# _prep also takes tile_w (W and U~ as whole-chunk products; see _prep_kernel; off until timed)
declare_launch(TRITON_LAUNCH_KEYS + ('precision',),
               *('delta_rule_' + n for n in ('out', 'dlocal', 'grads_wy', 'grads_qk')))
declare_launch(TRITON_LAUNCH_KEYS + ('precision', 'tile_w'), 'delta_rule_prep')
declare_launch(TRITON_LAUNCH_KEYS + ('precision', 'block_v'), 'delta_rule_state')
declare_launch(TRITON_LAUNCH_KEYS + ('precision', 'block_v', 'split_k', 'local'), 'delta_rule_dstate')


def _launch(name, dtype, K):
    """Launch settings of kernel ``name`` (its ``PREC`` included): the constants above and
    :func:`dot_precision`, overridden by ``kernel_options(launch={'delta_rule_<name>': {...}})``, whose
    ``precision`` (one of ``PRECISIONS``) applies to 16-bit inputs (fp32 inputs keep 'ieee'); ``_dstate``
    also takes ``split_k`` (K in two halves: every dot K-wide BK / 2, the shapes of the K <= 64 build)."""
    opts = dict(LAUNCH[name])
    small_k = K <= MAX_TF32_K and dtype != torch.float32
    if name == 'prep' and small_k:
        opts['num_warps'] = PREP_WARPS_SMALL_K
    if name == 'out' and small_k:
        opts.update(num_warps=OUT_WARPS_SMALL_K, precision=OUT_PREC_SMALL_K)
    if name in ('state', 'dstate') and small_k:
        opts['num_stages'] = SEQ_STAGES_SMALL_K
    opts.update(current_options().launch_for('delta_rule_' + name))
    prec = opts.pop('precision', None)
    if prec is not None and prec not in PRECISIONS:
        raise ValueError(f"launch['delta_rule_{name}']['precision'] must be one of {PRECISIONS}, got {prec!r}")
    opts['PREC'] = prec if prec is not None and dtype != torch.float32 else dot_precision(dtype, K, name)
    opts['PREC'] = dot_prec(_INPUT_PREC.get(dtype, 'ieee') if opts['PREC'] == 'input' else opts['PREC'])
    if name == 'prep':
        opts['TILE_W'] = bool(opts.pop('tile_w', PREP_TILE_W))
    if name == 'dstate':
        opts['KS'] = 2 if opts.pop('split_k', dstate_split_k(dtype, K)) and _blocks(K, 1)[0] >= 32 else 1
        opts['LOCAL'] = bool(opts.pop('local', dtype != torch.float32 and K <= DSTATE_LOCAL_MAX_K))
        if opts['LOCAL'] and K > DSTATE_LOCAL_MAX_K:
            raise ValueError(f"launch['delta_rule_dstate']['local'] runs at K <= {DSTATE_LOCAL_MAX_K} (above, its "
                             'parallel kernel spills ~70-110 KB a thread and ran out of memory at K = 256), '
                             f'got K = {K}')
    bv = opts.pop('block_v', None)
    if bv is not None and (bv < 16 or bv & (bv - 1)):
        raise ValueError(f"launch['delta_rule_{name}']['block_v'] must be a power of two >= 16, got {bv!r}")
    if bv is not None:
        opts['BV'] = bv
    return opts


@triton.jit
def _chunk_rows(bos, eos, start, BT: tl.constexpr, REVERSE: tl.constexpr):
    """Logical positions ``start + [0, BT)`` of the sequence ``[bos, eos)``: (positions, valid, physical rows;
    invalid rows point at ``bos``)."""
    lp = start + tl.arange(0, BT)
    valid = lp < (eos - bos)
    phys = tl.where(valid, phys_row(lp, bos, eos, REVERSE), bos)
    return lp, valid, phys


@triton.jit
def _chunk_pids(VARLEN: tl.constexpr):
    """(chunk, batch x head) program ids of the chunk-parallel grids: (B*H, NT) dense, (chunks, H) packed, so
    that the count that can grow past 65535 (the limit of a grid's second axis) is on the first axis."""
    if VARLEN:
        pc = tl.program_id(0)
        pbh = tl.program_id(1)
    else:
        pc = tl.program_id(1)
        pbh = tl.program_id(0)
    return pc, pbh


@triton.jit
def _inv_unit_lower(A, SB: tl.constexpr, LOG2: tl.constexpr, PREC: tl.constexpr):
    """(I + A)^-1 for strictly lower triangular A [SB, SB] (SB = 2**LOG2): A is nilpotent, so
    (I + A)^-1 = (I - A)(I + A^2)(I + A^4)...(I + A^(SB/2)), 2 * (LOG2 - 1) small matrix products."""
    r = tl.arange(0, SB)
    T = tl.where(r[:, None] == r[None, :], 1., 0.) - A
    P = A
    for _ in tl.static_range(LOG2 - 1):
        P = _dot(P, P, PREC)
        T = T + _dot(T, P, PREC)
    return T


@triton.jit
def _blk_A(ki, kj, bi, Gi, Gj, vi, DIAG: tl.constexpr, SB: tl.constexpr, PREC: tl.constexpr):
    """Block (I, J) of A = diag(b) K K^T * exp(G_i - G_j), strictly lower on the diagonal blocks."""
    r = tl.arange(0, SB)
    if DIAG:
        m = (r[:, None] > r[None, :]) & vi[:, None]
    else:
        m = vi[:, None] & (r[None, :] >= 0)
    kkt = _dot(ki, tl.trans(kj), PREC)
    return tl.where(m, bi[:, None] * kkt * tl.exp(tl.where(m, _pdiff(Gi, Gj), 0.)), 0.)


@triton.jit
def _ld_rows(ptr, phys, valid, ih, H, D, cols):
    """Rows ``phys`` of a [rows, H, D] tensor, head ih, columns ``cols`` (masked to D), as float32."""
    m = valid[:, None] & (cols < D)[None, :]
    return tl.load(ptr + (phys[:, None] * H + ih) * D + cols[None, :], mask=m, other=0.).to(tl.float32)


@triton.jit
def _st_rows(ptr, x, phys, valid, ih, H, D, cols):
    m = valid[:, None] & (cols < D)[None, :]
    tl.store(ptr + (phys[:, None] * H + ih) * D + cols[None, :], x.to(ptr.dtype.element_ty), mask=m)


@triton.jit
def _st_tblk(base, x, I: tl.constexpr, J: tl.constexpr, SB: tl.constexpr, BT: tl.constexpr):
    r = tl.arange(0, SB)
    tl.store(base + (I * SB + r[:, None]) * BT + J * SB + r[None, :], x)


@jit
def _prep_kernel(k, v, beta, g, G_out, T_out, W_out, Ut_out, cu, chunk_seq, chunk_idx, N, NT,
                 H, K, V,
                 BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                 USE_G: tl.constexpr, REVERSE: tl.constexpr, PREC: tl.constexpr, VARLEN: tl.constexpr,
                 TILE_W: tl.constexpr):
    """Per chunk (parallel): G (chunk-local cumulative log gates), T = (I + A)^-1, W and U~. T is built from
    16x16 blocks (BT == 64): the four diagonal blocks by the nilpotent product, the others by block substitution.
    TILE_W: W and U~ as whole-chunk products T @ X from T read back after it is stored (one [BT, BT] dot each
    instead of ten 16-row ones, and no T block or key block held through them)."""
    SB: tl.constexpr = BT // 4
    pc, pbh = _chunk_pids(VARLEN)
    n, ih, c, bos, eos, ic = _chunk_at(pc, pbh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    ck = tl.arange(0, BK)
    _l0, v0, p0 = _chunk_rows(bos, eos, c * BT, SB, REVERSE)
    _l1, v1, p1 = _chunk_rows(bos, eos, c * BT + SB, SB, REVERSE)
    _l2, v2, p2 = _chunk_rows(bos, eos, c * BT + 2 * SB, SB, REVERSE)
    _l3, v3, p3 = _chunk_rows(bos, eos, c * BT + 3 * SB, SB, REVERSE)
    k0 = _ld_rows(k, p0, v0, ih, H, K, ck)
    k1 = _ld_rows(k, p1, v1, ih, H, K, ck)
    k2 = _ld_rows(k, p2, v2, ih, H, K, ck)
    k3 = _ld_rows(k, p3, v3, ih, H, K, ck)
    b0 = tl.load(beta + p0 * H + ih, mask=v0, other=0.).to(tl.float32)
    b1 = tl.load(beta + p1 * H + ih, mask=v1, other=0.).to(tl.float32)
    b2 = tl.load(beta + p2 * H + ih, mask=v2, other=0.).to(tl.float32)
    b3 = tl.load(beta + p3 * H + ih, mask=v3, other=0.).to(tl.float32)
    if USE_G:
        g0 = tl.load(g + p0 * H + ih, mask=v0, other=0.).to(tl.float64)
        g1 = tl.load(g + p1 * H + ih, mask=v1, other=0.).to(tl.float64)
        g2 = tl.load(g + p2 * H + ih, mask=v2, other=0.).to(tl.float64)
        g3 = tl.load(g + p3 * H + ih, mask=v3, other=0.).to(tl.float64)
        G0 = tl.cumsum(g0, 0)
        G1 = tl.cumsum(g1, 0) + tl.sum(g0, 0)
        G2 = tl.cumsum(g2, 0) + (tl.sum(g0, 0) + tl.sum(g1, 0))
        G3 = tl.cumsum(g3, 0) + (tl.sum(g0, 0) + tl.sum(g1, 0) + tl.sum(g2, 0))
        tl.store(G_out + p0 * H + ih, G0, mask=v0)
        tl.store(G_out + p1 * H + ih, G1, mask=v1)
        tl.store(G_out + p2 * H + ih, G2, mask=v2)
        tl.store(G_out + p3 * H + ih, G3, mask=v3)
    else:
        G0 = tl.zeros([SB], dtype=tl.float64)
        G1 = G0
        G2 = G0
        G3 = G0
    T00 = _inv_unit_lower(_blk_A(k0, k0, b0, G0, G0, v0, True, SB, PREC), SB, 4, PREC)
    T11 = _inv_unit_lower(_blk_A(k1, k1, b1, G1, G1, v1, True, SB, PREC), SB, 4, PREC)
    T22 = _inv_unit_lower(_blk_A(k2, k2, b2, G2, G2, v2, True, SB, PREC), SB, 4, PREC)
    T33 = _inv_unit_lower(_blk_A(k3, k3, b3, G3, G3, v3, True, SB, PREC), SB, 4, PREC)
    A10 = _blk_A(k1, k0, b1, G1, G0, v1, False, SB, PREC)
    A20 = _blk_A(k2, k0, b2, G2, G0, v2, False, SB, PREC)
    A21 = _blk_A(k2, k1, b2, G2, G1, v2, False, SB, PREC)
    A30 = _blk_A(k3, k0, b3, G3, G0, v3, False, SB, PREC)
    A31 = _blk_A(k3, k1, b3, G3, G1, v3, False, SB, PREC)
    A32 = _blk_A(k3, k2, b3, G3, G2, v3, False, SB, PREC)
    T10 = -_dot(T11, _dot(A10, T00, PREC), PREC)
    T21 = -_dot(T22, _dot(A21, T11, PREC), PREC)
    T32 = -_dot(T33, _dot(A32, T22, PREC), PREC)
    T20 = -_dot(T22, _dot(A20, T00, PREC) + _dot(A21, T10, PREC), PREC)
    T31 = -_dot(T33, _dot(A31, T11, PREC) + _dot(A32, T21, PREC), PREC)
    T30 = -_dot(T33, _dot(A30, T00, PREC) + _dot(A31, T10, PREC) + _dot(A32, T20, PREC), PREC)
    tb = T_out + (ic * H + ih).to(tl.int64) * BT * BT
    zero = tl.zeros([SB, SB], dtype=tl.float32)
    _st_tblk(tb, T00, 0, 0, SB, BT)
    _st_tblk(tb, zero, 0, 1, SB, BT)
    _st_tblk(tb, zero, 0, 2, SB, BT)
    _st_tblk(tb, zero, 0, 3, SB, BT)
    _st_tblk(tb, T10, 1, 0, SB, BT)
    _st_tblk(tb, T11, 1, 1, SB, BT)
    _st_tblk(tb, zero, 1, 2, SB, BT)
    _st_tblk(tb, zero, 1, 3, SB, BT)
    _st_tblk(tb, T20, 2, 0, SB, BT)
    _st_tblk(tb, T21, 2, 1, SB, BT)
    _st_tblk(tb, T22, 2, 2, SB, BT)
    _st_tblk(tb, zero, 2, 3, SB, BT)
    _st_tblk(tb, T30, 3, 0, SB, BT)
    _st_tblk(tb, T31, 3, 1, SB, BT)
    _st_tblk(tb, T32, 3, 2, SB, BT)
    _st_tblk(tb, T33, 3, 3, SB, BT)
    if TILE_W:
        tl.debug_barrier()   # every thread's T (and G) stores are visible to the whole program
        _w_u_tiles(k, v, beta, G_out, tb, W_out, Ut_out, bos, eos, c, ih, H, K, V, BT, BK, BV, USE_G, REVERSE,
                   PREC)
    else:
        x0 = k0 * (b0 * tl.exp(G0.to(tl.float32)))[:, None]
        x1 = k1 * (b1 * tl.exp(G1.to(tl.float32)))[:, None]
        x2 = k2 * (b2 * tl.exp(G2.to(tl.float32)))[:, None]
        x3 = k3 * (b3 * tl.exp(G3.to(tl.float32)))[:, None]
        _st_tri(W_out, T00, T10, T11, T20, T21, T22, T30, T31, T32, T33, x0, x1, x2, x3, p0, p1, p2, p3, v0, v1, v2,
                v3, ih, H, K, ck, PREC)
        for iv in range(0, tl.cdiv(V, BV)):
            cv = iv * BV + tl.arange(0, BV)
            y0 = _ld_rows(v, p0, v0, ih, H, V, cv) * b0[:, None]
            y1 = _ld_rows(v, p1, v1, ih, H, V, cv) * b1[:, None]
            y2 = _ld_rows(v, p2, v2, ih, H, V, cv) * b2[:, None]
            y3 = _ld_rows(v, p3, v3, ih, H, V, cv) * b3[:, None]
            _st_tri(Ut_out, T00, T10, T11, T20, T21, T22, T30, T31, T32, T33, y0, y1, y2, y3, p0, p1, p2, p3, v0, v1,
                    v2, v3, ih, H, V, cv, PREC)


@triton.jit
def _st_tri(out, T00, T10, T11, T20, T21, T22, T30, T31, T32, T33, x0, x1, x2, x3, p0, p1, p2, p3, v0, v1, v2, v3,
            ih, H, D, cols, PREC: tl.constexpr):
    """The four 16-row blocks of T @ X (T block lower triangular, X in row blocks x0..x3) into rows of ``out``."""
    _st_rows(out, _dot(T00, x0, PREC), p0, v0, ih, H, D, cols)
    _st_rows(out, _dot(T10, x0, PREC) + _dot(T11, x1, PREC), p1, v1, ih, H, D, cols)
    _st_rows(out, _dot(T20, x0, PREC) + _dot(T21, x1, PREC) + _dot(T22, x2, PREC), p2, v2, ih, H, D, cols)
    _st_rows(out, _dot(T30, x0, PREC) + _dot(T31, x1, PREC) + _dot(T32, x2, PREC) + _dot(T33, x3, PREC),
             p3, v3, ih, H, D, cols)


@triton.jit
def _w_u_tiles(k, v, beta, G, tb, W_out, Ut_out, bos, eos, c, ih, H, K, V, BT: tl.constexpr, BK: tl.constexpr,
               BV: tl.constexpr, USE_G: tl.constexpr, REVERSE: tl.constexpr, PREC: tl.constexpr):
    """W = T diag(beta exp(G)) K and U~ = T diag(beta) V of one chunk, T [BT, BT] read from ``tb``."""
    r = tl.arange(0, BT)
    lp, valid, phys = _chunk_rows(bos, eos, c * BT, BT, REVERSE)
    T = tl.load(tb + r[:, None] * BT + r[None, :])
    b = tl.load(beta + phys * H + ih, mask=valid, other=0.).to(tl.float32)
    ck = tl.arange(0, BK)
    if USE_G:
        Gc = tl.load(G + phys * H + ih, mask=valid, other=0.)
        xw = b * tl.exp(Gc.to(tl.float32))
    else:
        xw = b
    _st_rows(W_out, _dot(T, _ld_rows(k, phys, valid, ih, H, K, ck) * xw[:, None], PREC), phys, valid, ih, H, K, ck)
    for iv in range(0, tl.cdiv(V, BV)):
        cv = iv * BV + tl.arange(0, BV)
        _st_rows(Ut_out, _dot(T, _ld_rows(v, phys, valid, ih, H, V, cv) * b[:, None], PREC), phys, valid, ih, H, V,
                 cv)


@jit
def _state_kernel(k, W, Ut, G, U_out, h_buf, h0, ht, cu, chunk_off, N, NT,
                  H, K, V,
                  BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                  USE_G: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr,
                  REVERSE: tl.constexpr, PREC: tl.constexpr, VARLEN: tl.constexpr):
    iv = tl.program_id(1)
    n, ih, bos, eos, off = _seq_at(tl.program_id(0), cu, chunk_off, N, NT, H, VARLEN)
    L = eos - bos
    r = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    cv = iv * BV + tl.arange(0, BV)
    mh = (ck < K)[:, None] & (cv < V)[None, :]
    hs = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        hs = tl.load(h0 + (n * H + ih).to(tl.int64) * K * V + (ck[:, None] * V + cv[None, :]),
                     mask=mh, other=0.).to(tl.float32)
    for c in range(0, tl.cdiv(L, BT)):
        ic = (off + c).to(tl.int64)
        tl.store(h_buf + (ic * H + ih).to(tl.int64) * K * V + (ck[:, None] * V + cv[None, :]),
                 hs.to(h_buf.dtype.element_ty), mask=mh)
        lp, valid, phys = _chunk_rows(bos, eos, c * BT, BT, REVERSE)
        mk = valid[:, None] & (ck < K)[None, :]
        mv = valid[:, None] & (cv < V)[None, :]
        w = tl.load(W + (phys[:, None] * H + ih) * K + ck[None, :], mask=mk, other=0.).to(tl.float32)
        ut = tl.load(Ut + (phys[:, None] * H + ih) * V + cv[None, :], mask=mv, other=0.).to(tl.float32)
        u = ut - _dot(w, hs, PREC)
        tl.store(U_out + (phys[:, None] * H + ih) * V + cv[None, :], u.to(U_out.dtype.element_ty), mask=mv)
        kk = tl.load(k + (phys[:, None] * H + ih) * K + ck[None, :], mask=mk, other=0.).to(tl.float32)
        if USE_G:
            Gc = tl.load(G + phys * H + ih, mask=valid, other=0.)
            last = tl.minimum(L - c * BT, BT) - 1
            Gl = tl.sum(tl.where(r == last, Gc, 0.), 0)
            kd = kk * tl.where(valid, tl.exp(tl.where(valid, (Gl - Gc).to(tl.float32), 0.)), 0.)[:, None]
            hs = hs * tl.exp(Gl.to(tl.float32)) + _dot(tl.trans(kd), u, PREC)
        else:
            hs = hs + _dot(tl.trans(kk), u, PREC)
    if STORE_HT:
        tl.store(ht + (n * H + ih).to(tl.int64) * K * V + (ck[:, None] * V + cv[None, :]), hs, mask=mh)


@jit
def _out_kernel(q, k, G, U, h_buf, o, cu, chunk_seq, chunk_idx, N, NT, scale,
                H, K, V,
                BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                USE_G: tl.constexpr, REVERSE: tl.constexpr, PREC: tl.constexpr, VARLEN: tl.constexpr):
    iv = tl.program_id(2)
    pc, pbh = _chunk_pids(VARLEN)
    n, ih, c, bos, eos, ic = _chunk_at(pc, pbh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    lp, valid, phys = _chunk_rows(bos, eos, c * BT, BT, REVERSE)
    r = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    cv = iv * BV + tl.arange(0, BV)
    mk = valid[:, None] & (ck < K)[None, :]
    mv = valid[:, None] & (cv < V)[None, :]
    qq = tl.load(q + (phys[:, None] * H + ih) * K + ck[None, :], mask=mk, other=0.).to(tl.float32)
    kk = tl.load(k + (phys[:, None] * H + ih) * K + ck[None, :], mask=mk, other=0.).to(tl.float32)
    hs = tl.load(h_buf + (ic.to(tl.int64) * H + ih).to(tl.int64) * K * V + (ck[:, None] * V + cv[None, :]),
                 mask=(ck < K)[:, None] & (cv < V)[None, :], other=0.).to(tl.float32)
    u = tl.load(U + (phys[:, None] * H + ih) * V + cv[None, :], mask=mv, other=0.).to(tl.float32)
    causal = (r[:, None] >= r[None, :]) & valid[:, None]
    s = _dot(qq, tl.trans(kk), PREC) * scale
    if USE_G:
        Gc = tl.load(G + phys * H + ih, mask=valid, other=0.)
        p = tl.where(causal, s * tl.exp(tl.where(causal, _pdiff(Gc, Gc), 0.)), 0.)
        qg = qq * (scale * tl.exp(Gc.to(tl.float32)))[:, None]
    else:
        p = tl.where(causal, s, 0.)
        qg = qq * scale
    out = _dot(qg, hs, PREC) + _dot(p, u, PREC)
    tl.store(o + (phys[:, None] * H + ih) * V + cv[None, :], out.to(o.dtype.element_ty), mask=mv)


@triton.jit
def _dh_tile(ptr, base, ck, cv, K, V):
    """Pointers and mask of the [K block, V block] tile ``ck`` x ``cv`` of one [K, V] state at ``base``."""
    return ptr + base + (ck[:, None] * V + cv[None, :]), (ck < K)[:, None] & (cv < V)[None, :]


@triton.jit
def _scores_pt(st, Gc, valid, r, scale, USE_G: tl.constexpr):
    """P^T of a chunk from st = K Q^T (st[i, j] = k_i . q_j): scale * st * exp(G_j - G_i) for i <= j (valid j),
    zero elsewhere; ``Gc`` the chunk's float64 cumulative log gates (unused without a gate)."""
    upper = (r[:, None] <= r[None, :]) & valid[None, :]
    if USE_G:
        pt = tl.where(upper, scale * st * tl.exp(tl.where(upper, -_pdiff(Gc, Gc), 0.)), 0.)
    else:
        pt = tl.where(upper, scale * st, 0.)
    return pt


@jit
def _dlocal_kernel(q, k, G, do, dU_out, dh_buf, cu, chunk_seq, chunk_idx, N, NT, scale,
                   H, K, V,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   USE_G: tl.constexpr, REVERSE: tl.constexpr, PREC: tl.constexpr, VARLEN: tl.constexpr,
                   KS: tl.constexpr):
    """Per chunk (parallel): the terms of ``_dstate``'s step that do not depend on the carried dH, P^T do into
    dU_out (P the causal decayed q.k scores) and (diag(scale exp(G)) Q)^T do into the chunk's dh_buf slot, which
    ``_dstate`` reads before it writes the chunk's dH there. KS as in ``_dstate``."""
    pc, pbh = _chunk_pids(VARLEN)
    n, ih, c, bos, eos, ic = _chunk_at(pc, pbh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    lp, valid, phys = _chunk_rows(bos, eos, c * BT, BT, REVERSE)
    r = tl.arange(0, BT)
    ck = tl.arange(0, BK // KS)
    qq = _ld_rows(q, phys, valid, ih, H, K, ck)
    st = _dot(_ld_rows(k, phys, valid, ih, H, K, ck), tl.trans(qq), PREC)
    if KS == 2:
        ck1 = BK // 2 + ck
        qq1 = _ld_rows(q, phys, valid, ih, H, K, ck1)
        st += _dot(_ld_rows(k, phys, valid, ih, H, K, ck1), tl.trans(qq1), PREC)
    if USE_G:
        Gc = tl.load(G + phys * H + ih, mask=valid, other=0.)
        fq = scale * tl.exp(Gc.to(tl.float32))
    else:
        Gc = tl.zeros([BT], dtype=tl.float64)
        fq = tl.where(valid, scale, 0.)
    pt = _scores_pt(st, Gc, valid, r, scale, USE_G)
    chunk_base = (ic * H + ih).to(tl.int64) * K * V
    for iv in range(0, tl.cdiv(V, BV)):
        cv = iv * BV + tl.arange(0, BV)
        mv = valid[:, None] & (cv < V)[None, :]
        dout = tl.load(do + (phys[:, None] * H + ih) * V + cv[None, :], mask=mv, other=0.).to(tl.float32)
        tl.store(dU_out + (phys[:, None] * H + ih) * V + cv[None, :], _dot(pt, dout, PREC), mask=mv)
        pt_, m_ = _dh_tile(dh_buf, chunk_base, ck, cv, K, V)
        tl.store(pt_, _dot(tl.trans(qq * fq[:, None]), dout, PREC), mask=m_)
        if KS == 2:
            pt_, m_ = _dh_tile(dh_buf, chunk_base, ck1, cv, K, V)
            tl.store(pt_, _dot(tl.trans(qq1 * fq[:, None]), dout, PREC), mask=m_)


@jit
def _dstate_kernel(q, k, G, W, do, dU_out, dh_buf, dht, dh0, cu, chunk_off, N, NT, scale,
                   H, K, V,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   USE_G: tl.constexpr, USE_DHT: tl.constexpr, STORE_DH0: tl.constexpr,
                   REVERSE: tl.constexpr, PREC: tl.constexpr, VARLEN: tl.constexpr, KS: tl.constexpr,
                   LOCAL: tl.constexpr):
    """KS = 2: K in two halves of BK / 2 columns (two [BK / 2, BV] state tiles, every dot K-wide BK / 2).
    LOCAL: ``_dlocal_kernel`` has put the chunk-local terms in dU_out and dh_buf (read here, then overwritten)."""
    iv = tl.program_id(1)
    n, ih, bos, eos, off = _seq_at(tl.program_id(0), cu, chunk_off, N, NT, H, VARLEN)
    L = eos - bos
    nc = tl.cdiv(L, BT)
    r = tl.arange(0, BT)
    ck = tl.arange(0, BK // KS)
    cv = iv * BV + tl.arange(0, BV)
    seq_base = (n * H + ih).to(tl.int64) * K * V
    dh = tl.zeros([BK // KS, BV], dtype=tl.float32)
    if KS == 2:
        ck1 = BK // 2 + ck
        dh1 = tl.zeros([BK // 2, BV], dtype=tl.float32)
    if USE_DHT:
        pt_, m_ = _dh_tile(dht, seq_base, ck, cv, K, V)
        dh = tl.load(pt_, mask=m_, other=0.).to(tl.float32)
        if KS == 2:
            pt_, m_ = _dh_tile(dht, seq_base, ck1, cv, K, V)
            dh1 = tl.load(pt_, mask=m_, other=0.).to(tl.float32)
    for cc in range(0, nc):
        c = nc - 1 - cc
        ic = (off + c).to(tl.int64)
        chunk_base = (ic * H + ih).to(tl.int64) * K * V
        lp, valid, phys = _chunk_rows(bos, eos, c * BT, BT, REVERSE)
        mv = valid[:, None] & (cv < V)[None, :]
        du_ptr = dU_out + (phys[:, None] * H + ih) * V + cv[None, :]
        kk = _ld_rows(k, phys, valid, ih, H, K, ck)
        w = _ld_rows(W, phys, valid, ih, H, K, ck)
        if KS == 2:
            kk1 = _ld_rows(k, phys, valid, ih, H, K, ck1)
            w1 = _ld_rows(W, phys, valid, ih, H, K, ck1)
        if USE_G:
            Gc = tl.load(G + phys * H + ih, mask=valid, other=0.)
            last = tl.minimum(L - c * BT, BT) - 1
            Gl = tl.sum(tl.where(r == last, Gc, 0.), 0)
            fk = tl.where(valid, tl.exp(tl.where(valid, (Gl - Gc).to(tl.float32), 0.)), 0.)
            fq = scale * tl.exp(Gc.to(tl.float32))
        else:
            Gc = tl.zeros([BT], dtype=tl.float64)
            fk = tl.where(valid, 1., 0.)
            fq = tl.where(valid, scale, 0.)
        if LOCAL:
            du = tl.load(du_ptr, mask=mv, other=0.) + _dot(kk * fk[:, None], dh, PREC)
            pt_, m_ = _dh_tile(dh_buf, chunk_base, ck, cv, K, V)
            loc = tl.load(pt_, mask=m_, other=0.)
            if KS == 2:
                pt_, m_ = _dh_tile(dh_buf, chunk_base, ck1, cv, K, V)
                loc1 = tl.load(pt_, mask=m_, other=0.)
        else:
            qq = _ld_rows(q, phys, valid, ih, H, K, ck)
            dout = tl.load(do + (phys[:, None] * H + ih) * V + cv[None, :], mask=mv, other=0.).to(tl.float32)
            # st[i, j] = k_i . q_j ; P^T[i, j] = P[j, i] (nonzero for i <= j)
            st = _dot(kk, tl.trans(qq), PREC)
            if KS == 2:
                qq1 = _ld_rows(q, phys, valid, ih, H, K, ck1)
                st += _dot(kk1, tl.trans(qq1), PREC)
            du = _dot(_scores_pt(st, Gc, valid, r, scale, USE_G), dout, PREC) + _dot(kk * fk[:, None], dh, PREC)
            loc = _dot(tl.trans(qq * fq[:, None]), dout, PREC)
            if KS == 2:
                loc1 = _dot(tl.trans(qq1 * fq[:, None]), dout, PREC)
        if KS == 2:
            du += _dot(kk1 * fk[:, None], dh1, PREC)
        tl.store(du_ptr, du, mask=mv)
        dh_end = dh
        if KS == 2:
            dh1_end = dh1
        if USE_G:
            dh = dh * tl.exp(Gl.to(tl.float32))
            if KS == 2:
                dh1 = dh1 * tl.exp(Gl.to(tl.float32))
        dh = dh + loc - _dot(tl.trans(w), du, PREC)
        if KS == 2:
            dh1 = dh1 + loc1 - _dot(tl.trans(w1), du, PREC)
        # every thread has read its part of this chunk's dh_buf slot (LOCAL) before any overwrites it
        tl.debug_barrier()
        pt_, m_ = _dh_tile(dh_buf, chunk_base, ck, cv, K, V)
        tl.store(pt_, dh_end, mask=m_)
        if KS == 2:
            pt_, m_ = _dh_tile(dh_buf, chunk_base, ck1, cv, K, V)
            tl.store(pt_, dh1_end, mask=m_)
    if STORE_DH0:
        pt_, m_ = _dh_tile(dh0, seq_base, ck, cv, K, V)
        tl.store(pt_, dh, mask=m_)
        if KS == 2:
            pt_, m_ = _dh_tile(dh0, seq_base, ck1, cv, K, V)
            tl.store(pt_, dh1, mask=m_)


@jit
def _grads_wy_kernel(k, v, beta, G, T_buf, U, dU, h_buf, dk_part, dv, dbeta, dG_part, cu, chunk_seq, chunk_idx,
                     N, NT,
                     H, K, V,
                     BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     USE_G: tl.constexpr, REVERSE: tl.constexpr, PREC: tl.constexpr, VARLEN: tl.constexpr):
    """Split backward, part 1: everything that flows through T (the UT transform): dv, dbeta, and the parts of
    dk and dG from W = T diag(b e^G) K and A; written to float32 scratch for part 2."""
    pc, pbh = _chunk_pids(VARLEN)
    n, ih, c, bos, eos, ic = _chunk_at(pc, pbh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    lp, valid, phys = _chunk_rows(bos, eos, c * BT, BT, REVERSE)
    r = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    mk = valid[:, None] & (ck < K)[None, :]
    ic64 = ic.to(tl.int64)
    b = tl.load(beta + phys * H + ih, mask=valid, other=0.).to(tl.float32)
    T = tl.load(T_buf + (ic64 * H + ih) * BT * BT + (r[:, None] * BT + r[None, :]))
    dVbH0 = tl.zeros([BT, BK], dtype=tl.float32)   # dVb H0^T
    dAa = tl.zeros([BT, BT], dtype=tl.float32)     # dVb U^T
    db = tl.zeros([BT], dtype=tl.float32)
    for iv in range(0, tl.cdiv(V, BV)):
        cv = iv * BV + tl.arange(0, BV)
        mv = valid[:, None] & (cv < V)[None, :]
        mh = (ck < K)[:, None] & (cv < V)[None, :]
        du = tl.load(dU + (phys[:, None] * H + ih) * V + cv[None, :], mask=mv, other=0.)
        dvb = _dot(tl.trans(T), du, PREC)
        tl.store(dv + (phys[:, None] * H + ih) * V + cv[None, :], (dvb * b[:, None]).to(dv.dtype.element_ty), mask=mv)
        vv = tl.load(v + (phys[:, None] * H + ih) * V + cv[None, :], mask=mv, other=0.).to(tl.float32)
        db += tl.sum(dvb * vv, 1)
        h0 = tl.load(h_buf + (ic64 * H + ih) * K * V + (ck[:, None] * V + cv[None, :]), mask=mh,
                     other=0.).to(tl.float32)
        dVbH0 += _dot(dvb, tl.trans(h0), PREC)
        u = tl.load(U + (phys[:, None] * H + ih) * V + cv[None, :], mask=mv, other=0.).to(tl.float32)
        dAa += _dot(dvb, tl.trans(u), PREC)
    kk = tl.load(k + (phys[:, None] * H + ih) * K + ck[None, :], mask=mk, other=0.).to(tl.float32)
    strict = (r[:, None] > r[None, :]) & valid[:, None]
    if USE_G:
        Gc = tl.load(G + phys * H + ih, mask=valid, other=0.)
        Ds = tl.where(strict, tl.exp(tl.where(strict, _pdiff(Gc, Gc), 0.)), 0.)
        eG = tl.exp(Gc.to(tl.float32))
    else:
        Ds = tl.where(strict, 1., 0.)
        eG = tl.full([BT], 1., dtype=tl.float32)
    dKb = -dVbH0
    dk_acc = dKb * (b * eG)[:, None]
    kdb = tl.sum(dKb * kk, 1)
    db += kdb * eG
    kkt = _dot(kk, tl.trans(kk), PREC)
    dAD = tl.where(strict, -dAa, 0.) * Ds
    dAg = dAD * b[:, None]
    dk_acc += _dot(dAg, kk, PREC) + _dot(tl.trans(dAg), kk, PREC)
    aa = dAD * kkt
    db += tl.sum(aa, 1)
    tl.store(dk_part + (phys[:, None] * H + ih) * K + ck[None, :], dk_acc, mask=mk)
    tl.store(dbeta + phys * H + ih, db.to(dbeta.dtype.element_ty), mask=valid)
    if USE_G:
        aab = aa * b[:, None]
        dGp = kdb * b * eG + tl.sum(aab, 1) - tl.sum(aab, 0)
        tl.store(dG_part + phys * H + ih, dGp, mask=valid)


@jit
def _grads_qk_kernel(q, k, G, U, do, h_buf, dh_buf, dk_part, dG_part, dq, dk, dg, cu, chunk_seq, chunk_idx, N,
                     NT, scale,
                     H, K, V,
                     BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                     USE_G: tl.constexpr, REVERSE: tl.constexpr, PREC: tl.constexpr, VARLEN: tl.constexpr):
    """Split backward, part 2: the output and chunk-end-state paths (dq, the rest of dk, dg)."""
    pc, pbh = _chunk_pids(VARLEN)
    n, ih, c, bos, eos, ic = _chunk_at(pc, pbh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    L = eos - bos
    lp, valid, phys = _chunk_rows(bos, eos, c * BT, BT, REVERSE)
    r = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    mk = valid[:, None] & (ck < K)[None, :]
    ic64 = ic.to(tl.int64)
    dq1 = tl.zeros([BT, BK], dtype=tl.float32)     # dO H0^T
    dP = tl.zeros([BT, BT], dtype=tl.float32)      # dO U^T
    dKd = tl.zeros([BT, BK], dtype=tl.float32)     # U dH^T
    sumH = tl.zeros([BK], dtype=tl.float32)
    for iv in range(0, tl.cdiv(V, BV)):
        cv = iv * BV + tl.arange(0, BV)
        mv = valid[:, None] & (cv < V)[None, :]
        mh = (ck < K)[:, None] & (cv < V)[None, :]
        u = tl.load(U + (phys[:, None] * H + ih) * V + cv[None, :], mask=mv, other=0.).to(tl.float32)
        dout = tl.load(do + (phys[:, None] * H + ih) * V + cv[None, :], mask=mv, other=0.).to(tl.float32)
        h0 = tl.load(h_buf + (ic64 * H + ih) * K * V + (ck[:, None] * V + cv[None, :]), mask=mh,
                     other=0.).to(tl.float32)
        dhe = tl.load(dh_buf + (ic64 * H + ih) * K * V + (ck[:, None] * V + cv[None, :]), mask=mh, other=0.)
        dq1 += _dot(dout, tl.trans(h0), PREC)
        dP += _dot(dout, tl.trans(u), PREC)
        dKd += _dot(u, tl.trans(dhe), PREC)
        if USE_G:
            sumH += tl.sum(h0 * dhe, 1)
    qq = tl.load(q + (phys[:, None] * H + ih) * K + ck[None, :], mask=mk, other=0.).to(tl.float32)
    kk = tl.load(k + (phys[:, None] * H + ih) * K + ck[None, :], mask=mk, other=0.).to(tl.float32)
    causal = (r[:, None] >= r[None, :]) & valid[:, None]
    last = tl.minimum(L - c * BT, BT) - 1
    if USE_G:
        Gc = tl.load(G + phys * H + ih, mask=valid, other=0.)
        Dc = tl.where(causal, tl.exp(tl.where(causal, _pdiff(Gc, Gc), 0.)), 0.)
        eG = tl.exp(Gc.to(tl.float32))
        Gl = tl.sum(tl.where(r == last, Gc, 0.), 0)
        ekd = tl.where(valid, tl.exp(tl.where(valid, (Gl - Gc).to(tl.float32), 0.)), 0.)
    else:
        Dc = tl.where(causal, 1., 0.)
        eG = tl.full([BT], 1., dtype=tl.float32)
        ekd = tl.where(valid, 1., 0.)
    dPs = dP * Dc * scale
    dq_acc = dq1 * (scale * eG)[:, None] + _dot(dPs, kk, PREC)
    tl.store(dq + (phys[:, None] * H + ih) * K + ck[None, :], dq_acc.to(dq.dtype.element_ty), mask=mk)
    dk_acc = tl.load(dk_part + (phys[:, None] * H + ih) * K + ck[None, :], mask=mk, other=0.)
    dk_acc += _dot(tl.trans(dPs), qq, PREC) + dKd * ekd[:, None]
    tl.store(dk + (phys[:, None] * H + ih) * K + ck[None, :], dk_acc.to(dk.dtype.element_ty), mask=mk)
    if USE_G:
        dG = tl.sum(qq * dq1, 1) * scale * eG + tl.load(dG_part + phys * H + ih, mask=valid, other=0.)
        s = _dot(qq, tl.trans(kk), PREC)
        strict = (r[:, None] > r[None, :]) & valid[:, None]
        pp = tl.where(strict, dPs * s, 0.)
        dG += tl.sum(pp, 1) - tl.sum(pp, 0)
        kdr = tl.where(r == last, 0., tl.sum(dKd * kk * ekd[:, None], 1))
        dG -= kdr
        dG += tl.where(r == last, tl.exp(Gl.to(tl.float32)) * tl.sum(sumH, 0) + tl.sum(kdr, 0), 0.)
        dG = tl.where(valid, dG, 0.)
        dgv = tl.cumsum(dG, 0, reverse=True)
        tl.store(dg + phys * H + ih, dgv.to(dg.dtype.element_ty), mask=valid)


def _blocks(K, V):
    """K block (the whole head dim, one tile) and V block of the parallel kernels."""
    return max(16, next_power_of_2(K)), min(64, max(16, next_power_of_2(V)))


def _bv_state(S, H, V):
    """V block of the sequential kernels: the widest (<= 64) that still gives MIN_PROGRAMS_STATE programs
    (each V block repeats the chunk's q / k / W loads and intra-chunk products)."""
    bv = min(64, max(16, next_power_of_2(V)))
    while bv > 16 and S * H * cdiv(V, bv) < MIN_PROGRAMS_STATE:
        bv //= 2
    return bv


def dot_precision(dtype, K, name):
    """``input_precision`` of kernel ``name``'s ``tl.dot``s: 'ieee' for fp32 inputs and, for 16-bit inputs,
    above MAX_TF32_K_CHECKED (a 256-wide K block, never run with tf32 on the GPU), else 'tf32' (``_dstate`` at
    K > MAX_TF32_K over K in halves: :func:`dstate_split_k`)."""
    return 'ieee' if dtype == torch.float32 or K > MAX_TF32_K_CHECKED else 'tf32'


def dstate_split_k(dtype, K):
    """Whether ``_dstate`` runs over K in two halves by default: 16-bit inputs at MAX_TF32_K < K <=
    MAX_TF32_K_CHECKED (its full-K tf32 build faults at K = 128; the halves run clean, session 12)."""
    return dtype != torch.float32 and MAX_TF32_K < K <= MAX_TF32_K_CHECKED


def check_kernel_args(B, N, H, K, V, packed=False):
    """What the kernels cannot take, as a ``ValueError`` naming the argument, before any launch (the public op's
    shape / dtype / device checks come first; this adds the kernels' own limits). ``packed``: ``cu_seqlens``
    is given (its chunks lie on the grid's unbounded axis)."""
    if not 1 <= K <= MAX_HEAD_DIM_K:
        raise ValueError(f'q / k head dim K must be in [1, {MAX_HEAD_DIM_K}], got {K}')
    if V < 1:
        raise ValueError(f'v head dim V must be >= 1, got {V}')
    if not packed and cdiv(N, BT) > 65535:
        raise ValueError(f'q: N = {N} tokens per sequence is more than {65535 * BT} (65535 chunks of {BT}: the '
                         f'CUDA grid limit); pack longer inputs as several sequences with cu_seqlens')
    if B * N * H * max(K, V) >= 2 ** 31:
        raise ValueError(f'q / v too large for 32-bit row offsets: B * N * H * max(K, V) = '
                         f'{B * N * H * max(K, V)} must be < 2**31 (split the batch)')


def _nt_bound(B, N, S, varlen):
    """Rows of the per-chunk buffers: every chunk fits (packed: sum of ceil(L_s / BT) <= N // BT + S), and the
    bound is known without reading ``cu_seqlens`` (fake tensors under ``torch.compile``)."""
    return N // BT + S if varlen else B * cdiv(N, BT)


def residual_meta(q, v, g, cu_seqlens):
    """(shape, dtype) of each residual :func:`delta_rule_fwd` returns, from shapes alone (fake tensors)."""
    B, N, H, K = q.shape
    V = v.shape[-1]
    S = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    NT = _nt_bound(B, N, S, cu_seqlens is not None)
    f32 = torch.float32
    rt = residual_dtype(q.dtype)
    return [((B * N, H) if g is not None else (0,), torch.float64), ((NT, H, BT, BT), f32), ((B * N, H, K), rt),
            ((B * N, H, V), rt), ((NT, H, K, V), rt)]


def residual_dtype(dtype):
    """dtype of W, U~, U and the chunk states for inputs of ``dtype`` (option ``delta_rule_residuals``)."""
    return dtype if current_options().delta_rule_residuals == 'input' and dtype in _INPUT_PREC else torch.float32


def _tables(B, N, H, cu_seqlens, device):
    """Kernel arguments of the packed-sequence tables: (parallel kernels' table args, their grid, sequential
    kernels' table args, S, varlen)."""
    seqs = PackedSeqs(B, N, cu_seqlens, device)
    ct = seqs.chunks(BT, H)
    par = (ct.cu, ct.chunk_seq, ct.chunk_idx, N, ct.NT)
    seq = (ct.cu, ct.chunk_off, N, ct.NT)
    grid = (ct.nchunks, ct.nbh) if ct.varlen else (ct.nbh, ct.nchunks)   # see _chunk_pids
    return par, grid, seq, seqs.nseq, ct.varlen


def delta_rule_fwd(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, reverse):
    """Forward kernels. Returns ``((o, final_state or None), residuals)``; ``residuals`` (tensors, see
    :func:`residual_meta`) is what :func:`delta_rule_bwd` needs besides the inputs."""
    B, N, H, K = q.shape
    V = v.shape[-1]
    BK, BV = _blocks(K, V)
    dev = q.device
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    use_g = g is not None
    g = g.contiguous() if use_g else beta
    par, grid, seq, S, varlen = _tables(B, N, H, cu_seqlens, dev)
    (gs, gd), (ts, td), (ws, rt), (us, _), (hs, _) = residual_meta(q, v, g if use_g else None, cu_seqlens)
    G = alloc(gs, gd, dev)
    Tb = alloc(ts, td, dev)
    W, Ut, U, hb = (alloc(x, rt, dev) for x in (ws, us, us, hs))
    o = alloc((B, N, H, V), q.dtype, dev)
    ht = alloc((S, H, K, V), torch.float32, dev) if output_final_state else None
    h0 = initial_state.contiguous() if initial_state is not None else None
    state_opts = _launch('state', q.dtype, K)
    BVs = state_opts.pop('BV', None) or _bv_state(S, H, V)
    flags = dict(BT=BT, BK=BK, USE_G=use_g, REVERSE=reverse, VARLEN=varlen)
    if grid[0] * grid[1] > 0:
        _prep_kernel[grid](k, v, beta, g, G if use_g else beta, Tb, W, Ut, *par, H, K, V, BV=BV, **flags,
                           **_launch('prep', q.dtype, K))
    _state_kernel[(S * H, cdiv(V, BVs))](
        k, W, Ut, G if use_g else beta, U, hb, h0 if h0 is not None else W, ht if ht is not None else W, *seq,
        H, K, V, BV=BVs, USE_H0=h0 is not None, STORE_HT=ht is not None, **flags, **state_opts)
    if grid[0] * grid[1] > 0:
        _out_kernel[(*grid, cdiv(V, BV))](q, k, G if use_g else beta, U, hb, o, *par, scale, H, K, V,
                                                 BV=BV, **flags, **_launch('out', q.dtype, K))
    return (o, ht), (G, Tb, W, U, hb)


def delta_rule_bwd(do, dht, residuals, q, k, v, beta, g, scale, initial_state, cu_seqlens, reverse):
    """Backward kernels: ``(dq, dk, dv, dbeta, dg or None, d initial_state or None)`` from the output
    gradients (``do`` None: zeros; ``dht`` None: no final-state gradient) and the forward's residuals."""
    G, Tb, W, U, hb = residuals
    B, N, H, K = q.shape
    V = v.shape[-1]
    BK, BV = _blocks(K, V)
    dev = q.device
    f32 = torch.float32
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    use_g = g is not None
    Gp = G if use_g else beta
    do = torch.zeros_like(q[..., :1].expand(B, N, H, V)) if do is None else do.contiguous()
    dht = dht.contiguous() if dht is not None else None
    h0 = initial_state
    par, grid, seq, S, varlen = _tables(B, N, H, cu_seqlens, dev)
    flags = dict(BT=BT, BK=BK, USE_G=use_g, REVERSE=reverse, VARLEN=varlen)
    dU = alloc((B * N, H, V), f32, dev)
    dhb = alloc(hb.shape, f32, dev)
    dh0 = alloc((S, H, K, V), f32, dev) if h0 is not None else None
    dstate_opts = _launch('dstate', q.dtype, K)
    BVs = dstate_opts.pop('BV', None) or _bv_state(S, H, V)
    if dstate_opts['LOCAL'] and grid[0] * grid[1] > 0:
        _dlocal_kernel[grid](q, k, Gp, do, dU, dhb, *par, scale, H, K, V, BV=BV, **flags,
                             **{**_launch('dlocal', q.dtype, K), 'KS': dstate_opts['KS']})
    _dstate_kernel[(S * H, cdiv(V, BVs))](
        q, k, Gp, W, do, dU, dhb, dht if dht is not None else W, dh0 if dh0 is not None else W, *seq, scale,
        H, K, V, BV=BVs, USE_DHT=dht is not None, STORE_DH0=dh0 is not None, **flags, **dstate_opts)
    dq = alloc(q.shape, q.dtype, dev)
    dk = alloc(k.shape, k.dtype, dev)
    dv = alloc(v.shape, v.dtype, dev)
    dbeta = alloc(beta.shape, beta.dtype, dev)
    dg = alloc((B, N, H), g.dtype, dev) if use_g else None
    if grid[0] * grid[1] > 0:
        dk_part = alloc((B * N, H, K), f32, dev)
        dG_part = alloc((B * N, H), f32, dev) if use_g else dk_part
        _grads_wy_kernel[grid](k, v, beta, Gp, Tb, U, dU, hb, dk_part, dv, dbeta, dG_part, *par, H, K, V,
                               BV=BV, **flags, **_launch('grads_wy', q.dtype, K))
        _grads_qk_kernel[grid](q, k, Gp, U, do, hb, dhb, dk_part, dG_part, dq, dk, dg if use_g else dbeta, *par,
                               scale, H, K, V, BV=BV, **flags, **_launch('grads_qk', q.dtype, K))
    if dh0 is not None:
        dh0 = dh0.to(h0.dtype)
    return dq, dk, dv, dbeta, dg, dh0


class DeltaRuleFunction(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, reverse):
        (o, ht), res = delta_rule_fwd(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens,
                                      reverse)
        ctx.save_for_backward(q, k, v, beta, g, initial_state, cu_seqlens, *res)
        ctx.meta = (scale, reverse, current_options())
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, g, h0, cu, *res = ctx.saved_tensors
        scale, reverse, options = ctx.meta
        with kernel_options(options):   # the backward launches as the forward did
            grads = delta_rule_bwd(do, dht, res, q, k, v, beta, g, scale, h0, cu, reverse)
        dq, dk, dv, dbeta, dg, dh0 = grads
        return dq, dk, dv, dbeta, dg, None, dh0, None, None, None


def delta_rule_triton(q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False,
                      cu_seqlens=None, reverse=False):
    """Triton entry point: the kernels' own limits (:func:`check_kernel_args`) are checked here; shapes, dtypes
    and devices by the public op (``vla_mm.ops.delta_rule``). Runs on CUDA tensors, or on CPU tensors under
    ``TRITON_INTERPRET=1``."""
    B, N, H, K = q.shape
    check_kernel_args(B, N, H, K, v.shape[-1], packed=cu_seqlens is not None)
    if scale is None:
        scale = K ** -0.5
    return DeltaRuleFunction.apply(q, k, v, beta, g, float(scale), initial_state, output_final_state,
                                   cu_seqlens, reverse)
