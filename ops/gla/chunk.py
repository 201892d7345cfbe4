"""Chunked Triton kernels of the gated linear attention core: the forward / backward plan of both paths and the
glue of the custom op ``vla_mm::chunk_gla`` (what the forward keeps for the backward).

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
recomputed (``_fwd_h_kernel``), state gradients run right to left (``_bwd_dh_kernel``), then the chunk-parallel
kernels of the path. Gate gradients use ``dL/db_t = q_t * dq_t - k_t * dk_t`` (value gate:
``o_t * do_t - v_t * dv_t``), summed over the later tokens of t's chunk (``_revcumsum_kernel``) plus what the later
chunks and the final state add, in closed form: ``<S, dS>`` at the chunk's end (``_boundary_terms``; with the bonus
``rk`` of ``_bwd_dh_kernel``), so that no rounding error is carried from chunk to chunk (one sum over the sequence
let them grow as sqrt(N)); on the sub-block path the dq kernel writes ``q * dq`` (fp32) into the key-gate buffer and
the dk kernel (launched after it) subtracts ``k * dk``; on the A path ``_bwd_inter_kernel`` writes the difference.
Every pair of tokens (t, s) enters these buffers at both ends; the pairs whose gate factor is exp(0) over an empty
range of gates cancel exactly and are kept out of them (added to dq / dk / dv only): t == s, the last token's
final-state path, and with the bonus the pairs (t, t - 1) (inside a chunk: ``dAa`` / masked sub-block scores; across
a chunk boundary and with h0: the states' boundary terms ``yq`` / ``zk``); value gates read ``oex``, the output
without its t == s terms. Under strong gates (-20 per token) those pairs are O(1) while dL/dg is ~1e-7: left in,
their halves cancel only up to the rounding of each (~1e-3 with tensor-core operands).

Files: ``state.py`` (gate cumsums, state kernels: both paths), ``chunk_a.py`` (A path), ``chunk_subblock.py``
(sub-block path), ``blocks.py`` (``@triton.jit`` helpers of both paths), ``launch.py`` (block sizes, operand
precision, launch options); this file: the plan of one call and what the custom op keeps for the backward.
"""
import torch

from ..common.options import current_options
from ..common.varlen import PackedSeqs
from .chunk_a import _a_plan, _bwd_A, _fwd_A
from .chunk_subblock import _bwd_sub, _fwd_sub
from .launch import _gate_kind, _lowp
from .state import _boundary_terms, _bwd_dh, _final_terms, _fwd_h, _gate_cumsum, _revcumsum


def _use_A(gv):
    return current_options().gla_a_path and gv is None


def gla_fwd(q, k, v, gk, gv, u, scale, h0, output_final_state, meta, reverse):
    """(o, final state or None, final state without the last token's k v^T or None, A or None, o without its
    t == s terms or None (value gates: what dL/dgv reads), gate cumsums)."""
    GK = _gate_kind(gk)
    ieee = q.dtype == torch.float32
    gkb, gks = _gate_cumsum(gk, meta, reverse)
    gvb, gvs = _gate_cumsum(gv, meta, reverse)
    # value gates: dL/dgv = oex * do - v * dv (each pair of tokens at both ends, then a reverse cumsum) takes oex
    # from this pass: it is computed with the backward's operand precision, so that the two ends round alike
    # (GSA bf16 dL/dg errors of 3e-2 otherwise)
    lowp = _lowp(ieee) and (gv is None or not current_options().gla_bwd_fp32)
    # with 16-bit dots the output kernels round the states to the input dtype as they load them: stored so, the
    # same numbers at half the traffic
    h, ht, ht_ex, _ = _fwd_h(k, v, gkb, gks, gvb, gvs, h0, output_final_state, meta, GK, reverse, ieee, lowp=lowp,
                             h_dtype=k.dtype if lowp else torch.float32)
    oex = A = None
    if _use_A(gv):
        o, A = _fwd_A(q, k, v, gkb, gk, u, h, scale, meta, GK, reverse, ieee, lowp)
    else:
        o, oex = _fwd_sub(q, k, v, gkb, gk, gvb, gv, u, h, scale, meta, GK, reverse, ieee, lowp)
    return o, ht, ht_ex, A, oex, (gkb, gks, gvb, gvs)


def _bwd_lowp(ieee, gate_grads):
    """16-bit operands in the backward's state / dq / dk kernels: unless ``gla_bwd_fp32`` asks for fp32 ones, always
    (True, the default) or only where a gate gradient is taken (``'gate_grads'``; ``gate_grads``: dL/dg = q*dq -
    k*dk cancels; without it the rounding is the forward's, as in fla's backward)."""
    fp32 = current_options().gla_bwd_fp32
    return _lowp(ieee) and not (fp32 is True or (fp32 == 'gate_grads' and gate_grads))


def gla_bwd(q, k, v, gk, gv, u, scale, h0, oex, do, dht, meta, reverse, A=None, cums=None, dgates=(True, True)):
    """``oex``: with value gates, the forward's output without its t == s terms (gla_fwd), else None. ``A``: the
    forward's intra-chunk scores (A path), None where it did not keep them (formed again here). ``cums``:
    the forward's gate cumsums ``(gkb, gks, gvb, gvs)`` (gla_fwd's last output, computed from the same gates,
    meta and direction); None: computed here. ``dgates``: whether the key / value gate gradients are wanted
    (None returned for an unwanted one)."""
    GK = _gate_kind(gk)
    ieee = q.dtype == torch.float32
    if cums is not None:
        gkb, gks, gvb, gvs = cums
        assert (gkb is None) == (gk is None) and (gvb is None) == (gv is None), 'cums do not match the gates'
    else:
        gkb, gks = _gate_cumsum(gk, meta, reverse)
        gvb, gvs = _gate_cumsum(gv, meta, reverse)
    want_gk, want_gv = gk is not None and dgates[0], gv is not None and dgates[1]
    # 16-bit inputs with a gate gradient: the backward's state, state-gradient and dq/dk kernels take fp32 operands
    # (tf32 tensor cores): the gate gradient q*dq - k*dk cancels, and bf16 operands there give dL/dg errors of
    # 2-3e-2 at N = 4096 (tf32: ~8x smaller operand rounding)
    lowp = _bwd_lowp(ieee, want_gk or want_gv)
    # 16-bit operands: the states and state gradients stored in the input dtype (the kernels round them so as
    # they load them: the same numbers at half the traffic); fp32 where the gate gradients' boundary terms read them
    st_dtype = k.dtype if lowp and not (want_gk or want_gv) else torch.float32
    # the final-state gate-gradient term (dht * final state without the last token) cancels against the dk/dv
    # terms of that path: the state is taken from this recompute, in the backward's precision, not the forward's
    # (bf16 operands there: GSA dL/dg errors of 2e-2)
    need_ht = dht is not None and (want_gk or want_gv)
    do = do.contiguous()
    # bonus form with gates: the pairs (t, t - 1) have gate factor exp(0) and cancel exactly in the gate gradient;
    # the state kernels give the chunk-boundary terms without them (yq, zk), the chunk kernels leave them out
    adj = u is not None and gk is not None
    h, _, ht, yq = _fwd_h(k, v, gkb, gks, gvb, gvs, h0, need_ht, meta, GK, reverse, ieee, lowp=lowp,
                          do=do if adj else None, h_dtype=st_dtype)
    dh, dh0, zk, rk = _bwd_dh(q, do, gkb, gk, gvb, gv, u, dht, h0, scale, meta, GK, reverse, ieee, lowp,
                              v=v if adj else None, h=h, yq=yq, dh_dtype=st_dtype)
    if _use_A(gv):
        dq, dk, dv, dbk, dbq = _bwd_A(q, k, v, gkb, gk, gks, u, scale, h, dh, A, do, meta, GK, reverse, ieee, lowp,
                                      yq, zk)
        dbv = None
    else:
        dq, dk, dv, dbk, dbv, dbq = _bwd_sub(q, k, v, gkb, gk, gks, gv, gvb, gvs, u, scale, h, dh, oex, do, meta, GK,
                                             reverse, ieee, lowp, yq, zk)
    dgk = dgv = du = None
    # the gate gradient of a token is summed within its chunk; what the later chunks add is taken in closed form
    # from the states (_boundary_terms; with the bonus rk from _bwd_dh, without the pairs of gate factor exp(0))
    if want_gk:
        if adj:
            carry = _final_terms(rk.sum(1), dht, ht, meta)
        else:
            bnd = _boundary_terms(h, dh, ht, meta)
            carry = bnd.sum(-1)
        dgk = _revcumsum(dbk, meta, reverse, carry if GK == 2 else carry.sum(-1))
        if dbq is not None:
            dgk = dgk - dbq
        dgk = dgk.to(gk.dtype)
    if want_gv:
        bnd = bnd if want_gk else _boundary_terms(h, dh, ht, meta)
        dgv = _revcumsum(dbv, meta, reverse, bnd.sum(-2)).to(gv.dtype)
    if u is not None:
        dov = (do.float() * v.float()).sum(-1, keepdim=True)
        du = (scale * dov * q.float() * k.float()).sum((0, 1)).to(u.dtype)
    return dq, dk, dv, dgk, dgv, du, (dh0.to(h0.dtype) if dh0 is not None else None)


_INPUTS = ('q', 'k', 'v', 'gk', 'gv', 'u', 'h0')


def saved_layout(q, k, v, gk, gv, u, h0):
    """Names of what the Triton forward keeps for the backward, in order (the custom op's residuals): the
    intra-chunk scores ``A`` (A path) or, with value gates, the fp32 output without its t == s terms ``oex`` (what
    dL/dgv reads), the chunk-local gate cumsums (``gla_keep_cumsum``: fp32, in each gate's shape, 8 bytes per gate
    element and gate), and the contiguous copy of every input that was not contiguous (so the backward copies
    nothing)."""
    opts = current_options()
    if opts.gla_a_path and gv is None:
        names = ['A'] if _a_plan(q.shape[-1], v.shape[-1], gk, u)[2] else []
    else:
        names = ['oex'] if gv is not None else []
    if opts.gla_keep_cumsum:
        names += (['gkb', 'gks'] if gk is not None else []) + (['gvb', 'gvs'] if gv is not None else [])
    names += [n for n, t in zip(_INPUTS, (q, k, v, gk, gv, u, h0)) if t is not None and not t.is_contiguous()]
    return names


def saved_like(names, q, k, v, gk, gv, u, h0, chunk_size):
    """Empty tensors shaped as :func:`saved_layout`'s residuals (the custom op's fake implementation)."""
    ins = dict(zip(_INPUTS, (q, k, v, gk, gv, u, h0)))
    f32 = torch.float32
    like = dict(A=lambda: q.new_empty((*q.shape[:3], chunk_size), dtype=f32),
                oex=lambda: v.new_empty(v.shape, dtype=f32),
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
    o, ht, _, A, oex, cums = gla_fwd(q, k, v, gk, gv, u, scale, h0, output_final_state, meta, reverse)
    kept = dict(dense, A=A, oex=oex, gkb=cums[0], gks=cums[1], gvb=cums[2], gvs=cums[3])
    return o, ht, [kept[n] for n in names]


def chunk_gla_bwd(do, dht, o, saved, q, k, v, gk, gv, u, scale, h0, output_final_state, cu_seqlens, reverse,
                  chunk_size, needs=None):
    """Triton backward of ``vla_mm::chunk_gla`` from the forward's output ``o`` and residuals ``saved``:
    (dq, dk, dv, dgk, dgv, du, dh0), None for an input that is None; ``needs``: whether each of them was asked
    for (None: all; an unasked gate gradient is not computed, and then needs no fp32 operands)."""
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
    dgates = (True, True) if needs is None else (needs[3], needs[4])
    return gla_bwd(q, k, v, gk, gv, u, scale, h0, kept.get('oex'), do, dht, meta, reverse, A=kept.get('A'),
                   cums=cums, dgates=dgates)
