"""Gated linear attention core: causal linear attention, RetNet, simple GLA / Mamba2-style, GLA, HGRN2,
lightnet and RWKV6 as options of one chunked op.

Public op: :func:`chunk_gla` (the custom op ``vla_mm::chunk_gla``); named wrappers that only set options:
:func:`chunk_linear_attn`, :func:`chunk_retention`, :func:`chunk_simple_gla`, :func:`chunk_rwkv6`.
Triton entry point (tests, interpreter): :func:`chunk_gla_triton`.
Reference (step by step, the truth): :func:`gla_recurrent_reference`.
"""
from typing import Optional, Tuple

import torch

from ..common import (check_cu_seqlens, check_dtype, check_initial_state, check_qkv, check_same_device,
                      kernel_options, register_op, use_triton)
from .chunk import chunk_gla_bwd, chunk_gla_fwd, saved_layout, saved_like
from .launch import CHUNK, SUB
from .reference import gla_chunk_reference, gla_recurrent_reference

__all__ = ['chunk_gla', 'chunk_gla_triton', 'gla_recurrent_reference', 'chunk_linear_attn', 'chunk_retention',
           'chunk_simple_gla', 'chunk_rwkv6']

MAX_HEAD_DIM_K = 256


def _check(q, k, v, g, gate, gv, u, initial_state, cu_seqlens):
    """Argument checks of every entry point; returns the number of sequences S."""
    for name, t in (('q', q), ('k', k), ('v', v), ('g', g), ('gv', gv), ('u', u),
                    ('initial_state', initial_state)):
        if t is not None:
            check_dtype(name, t, allow_float64=True)
    check_same_device(q=q, k=k, v=v, g=g, gv=gv, u=u, initial_state=initial_state, cu_seqlens=cu_seqlens)
    B, N, H, K = check_qkv(q, k, v, MAX_HEAD_DIM_K)
    V = v.shape[-1]
    if gate not in (None, 'none', 'scalar', 'vector'):
        raise ValueError(f"gate must be 'none', 'scalar' or 'vector', got {gate!r}")
    if g is None:
        if gate not in (None, 'none'):
            raise ValueError(f'gate={gate!r} needs g')
    else:
        if gate == 'none':
            raise ValueError("gate='none' takes no g")
        if g.shape == (B, N, H):
            if gate == 'vector':
                raise ValueError(f"gate='vector' needs g of shape [B, N, H, K] = {(B, N, H, K)}, "
                                 f'got {tuple(g.shape)}')
        elif g.shape == (B, N, H, K):
            if gate == 'scalar':
                raise ValueError(f"gate='scalar' needs g of shape [B, N, H] = {(B, N, H)}, got {tuple(g.shape)}")
        else:
            raise ValueError(f'g (log gates) must be [B, N, H] (one per head) or [B, N, H, K] (per key dim), '
                             f'got {tuple(g.shape)}')
    if gv is not None and gv.shape != (B, N, H, V):
        raise ValueError(f'gv (log value gates) must be [B, N, H, V] = {(B, N, H, V)}, got {tuple(gv.shape)}')
    if u is not None:
        if u.shape != (H, K):
            raise ValueError(f'u (RWKV6 bonus) must be [H, K] = {(H, K)}, got {tuple(u.shape)}')
        if gv is not None:
            raise ValueError('u (bonus) and gv (value gates) cannot be combined')
    S = check_cu_seqlens(cu_seqlens, B, N)
    check_initial_state(initial_state, (S, H, K, V), '[S, H, K, V]', allow_float64=True)
    return S


def _no_state(q):
    return torch.empty(0, dtype=torch.float32, device=q.device)


def _reference(q, k, v, g, gv, u, scale, initial_state, output_final_state, cu_seqlens, reverse, chunk_size):
    o, ht = gla_chunk_reference(q, k, v, gk=g, gv=gv, u=u, scale=scale, initial_state=initial_state,
                                output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)
    return o, (ht if ht is not None else _no_state(q))


def _triton(q, k, v, g, gv, u, scale, initial_state, output_final_state, cu_seqlens, reverse, chunk_size):
    o, ht, saved = chunk_gla_fwd(q, k, v, g, gv, u, scale, initial_state, output_final_state, cu_seqlens, reverse,
                                 chunk_size)
    return (o, ht if ht is not None else _no_state(q)), saved


def _triton_backward(grads, outputs, saved, q, k, v, g, gv, u, scale, initial_state, output_final_state,
                     cu_seqlens, reverse, chunk_size, needs=None):
    return chunk_gla_bwd(grads[0], grads[1], outputs[0], saved, q, k, v, g, gv, u, scale, initial_state,
                         output_final_state, cu_seqlens, reverse, chunk_size, needs=needs)


def _fake(q, k, v, g, gv, u, scale, initial_state, output_final_state, cu_seqlens, reverse, chunk_size):
    B, N, H, K = q.shape
    S = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ins = (q, k, v, g, gv, u, initial_state)
    f64 = any(t is not None and t.dtype == torch.float64 for t in ins)
    ht = q.new_empty((S, H, K, v.shape[-1]), dtype=torch.float64 if f64 else torch.float32) \
        if output_final_state else _no_state(q)
    outs = [q.new_empty(v.shape), ht]
    if use_triton(*ins, cu_seqlens):
        outs += saved_like(saved_layout(*ins), *ins, chunk_size)
    return outs


_chunk_gla_op = register_op(
    'chunk_gla', '(Tensor q, Tensor k, Tensor v, Tensor? g, Tensor? gv, Tensor? u, float scale, '
                 'Tensor? initial_state, bool output_final_state, Tensor? cu_seqlens, bool reverse, int chunk_size)',
    outputs=2, grads=('q', 'k', 'v', 'g', 'gv', 'u', 'initial_state'), reference=_reference, triton=_triton,
    triton_backward=_triton_backward, fake=_fake, backward_needs=True)


def chunk_gla_op(q, k, v, g, gv, u, scale, initial_state, output_final_state, cu_seqlens, reverse, chunk_size):
    """The custom op with the default scale resolved and None for a final state not asked for (no checks)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, ht = _chunk_gla_op(q, k, v, g, gv, u, scale, initial_state, bool(output_final_state), cu_seqlens,
                          bool(reverse), int(chunk_size))
    return o, (ht if output_final_state else None)


def chunk_gla_triton(q, k, v, gk=None, gv=None, u=None, scale=None, initial_state=None, output_final_state=False,
                     cu_seqlens=None, reverse=False, chunk_size=CHUNK):
    """The Triton kernels whatever the device (CPU tensors need ``TRITON_INTERPRET=1``); ``chunk_size`` (a
    multiple of 16) lets tests cross many chunk boundaries at small N. See :func:`chunk_gla`."""
    if chunk_size % SUB != 0 or chunk_size < SUB:
        raise ValueError(f'chunk_size must be a positive multiple of {SUB}, got {chunk_size}')
    _check(q, k, v, gk, None, gv, u, initial_state, cu_seqlens)
    with kernel_options(backend='triton'):
        return chunk_gla_op(q, k, v, gk, gv, u, scale, initial_state, output_final_state, cu_seqlens, reverse,
                     chunk_size)


def chunk_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor] = None, *,
              gate: Optional[str] = None, gv: Optional[torch.Tensor] = None, u: Optional[torch.Tensor] = None,
              scale: Optional[float] = None, initial_state: Optional[torch.Tensor] = None,
              output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None,
              reverse: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Gated linear attention, chunked: ``S_t = diag(exp(g_t)) S_{t-1} diag(exp(gv_t)) + k_t v_t^T``,
    ``o_t = scale * S_t^T q_t``.

    Args:
        q, k: ``[B, N, H, K]``; v: ``[B, N, H, V]`` (one dtype: fp32, fp16 or bf16; K <= 256).
        g: log gates (log of the decay, <= 0), ``None`` (no gate: causal linear attention),
            ``[B, N, H]`` (one per head: RetNet, simple GLA, Mamba2-style) or ``[B, N, H, K]``
            (per key dimension: GLA, HGRN2 with ``k = 1 - exp(g)``, lightnet, RWKV6's ``w``). Any float dtype;
            gates are accumulated in fp32.
        gate: optional check of the gate kind: ``'none' | 'scalar' | 'vector'`` (inferred from ``g``).
        gv: log gates on the value dimension ``[B, N, H, V]`` (GSA's first pass); cannot go with ``u``.
        u: ``[H, K]`` RWKV6 bonus: ``o_t = scale * (S_{t-1} + diag(u) k_t v_t^T)^T q_t`` (the current token
            enters through ``u``, not through the state).
        scale: defaults to ``K ** -0.5``.
        initial_state: ``[S, H, K, V]`` (S = B, or the number of packed sequences).
        output_final_state: also return the fp32 final state ``[S, H, K, V]``.
        cu_seqlens: ``[S + 1]`` int boundaries of packed sequences (then B must be 1).
        reverse: run right to left (t = N-1 ... 0) without flipping any tensor in memory.

    Returns:
        ``(o [B, N, H, V] in q's dtype, final_state or None)``.

    Log gates of -20 (or lower) and of ~0 are both safe: decays are exp of differences of chunk-local
    cumulative log gates, never ratios of exp(cumsum).
    """
    _check(q, k, v, g, gate, gv, u, initial_state, cu_seqlens)
    return chunk_gla_op(q, k, v, g, gv, u, scale, initial_state, output_final_state, cu_seqlens, reverse, CHUNK)


def chunk_linear_attn(q, k, v, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                      reverse=False):
    """Causal linear attention (no gate): ``chunk_gla`` with ``g=None``."""
    return chunk_gla(q, k, v, None, scale=scale, initial_state=initial_state,
                     output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)


def chunk_simple_gla(q, k, v, g, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                     reverse=False):
    """Simple GLA / Mamba2-style: one log gate per head and token, ``g`` of shape ``[B, N, H]``."""
    return chunk_gla(q, k, v, g, gate='scalar', scale=scale, initial_state=initial_state,
                     output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)


def retention_log_decay(num_heads: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """RetNet's fixed per-head decay, in log space: ``log(1 - 2^(-5 - h))``, shape ``[H]``."""
    # formed on ``device``: no host-to-device copy, so a call can be captured in a CUDA graph
    h = torch.arange(num_heads, dtype=torch.float64, device=device)
    return torch.log1p(-torch.exp2(-5.0 - h)).to(dtype=dtype)


def chunk_retention(q, k, v, *, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
                    reverse=False):
    """RetNet retention: a fixed decay per head (:func:`retention_log_decay`) as a scalar gate."""
    B, N, H, _ = q.shape
    g = retention_log_decay(H, device=q.device).expand(B, N, H)
    return chunk_simple_gla(q, k, v, g, scale=scale, initial_state=initial_state,
                            output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)


def chunk_rwkv6(r, k, v, w, u, *, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
                reverse=False):
    """RWKV6: receptance ``r``, log decay ``w`` ``[B, N, H, K]`` (<= 0), bonus ``u`` ``[H, K]``; scale 1."""
    return chunk_gla(r, k, v, w, gate='vector', u=u, scale=scale, initial_state=initial_state,
                     output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)
