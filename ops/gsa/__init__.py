"""GSA / ABC (gated slot attention): two passes of the gated linear attention core with a softmax over the
slots between them.

Public op: :func:`gsa` (it composes two calls of the custom op ``vla_mm::chunk_gla``; no op of its own).
Triton entry point: :func:`gsa_triton`. Reference: :func:`gsa_recurrent_reference`.

Pass 1 reads the key memory: ``chunk_gla(q, k, s, gv=g)`` (state ``[K, M]`` with the slot gate on its value
side) gives the slot scores; ``p = softmax(scores)`` over the M slots (fp32; float64 for float64 inputs); pass 2
reads the value memory: ``chunk_gla(p, s, v, g, scale=1)`` (state ``[M, V]`` with the slot gate on its key side).
"""
from typing import Optional, Tuple

import torch

from ..common import (check_cu_seqlens, check_dtype, check_initial_state, check_qkv, check_same_device,
                      kernel_options)
from ..gla import CHUNK, chunk_gla_op
from .reference import gsa_recurrent_reference

__all__ = ['gsa', 'gsa_triton', 'gsa_recurrent_reference']

MAX_HEAD_DIM = 256


def _check(q, k, v, s, g, initial_state, cu_seqlens):
    for name, t in (('q', q), ('k', k), ('v', v), ('s', s), ('g', g)):
        check_dtype(name, t, allow_float64=True)
    check_same_device(q=q, k=k, v=v, s=s, g=g, cu_seqlens=cu_seqlens)
    B, N, H, K = check_qkv(q, k, v, MAX_HEAD_DIM)
    if s.dim() != 4 or s.shape[:3] != q.shape[:3]:
        raise ValueError(f's must be [B, N, H, M] with B, N, H = {B, N, H}, got {tuple(s.shape)}')
    if g.shape != s.shape:
        raise ValueError(f'g must have the shape of s {tuple(s.shape)}, got {tuple(g.shape)}')
    if s.dtype != q.dtype:
        raise ValueError(f'q, k, v, s must share one dtype, got {q.dtype}, {s.dtype}')
    M, V = s.shape[-1], v.shape[-1]
    if not 1 <= M <= MAX_HEAD_DIM:
        raise ValueError(f'the slot count M must be in [1, {MAX_HEAD_DIM}], got M={M}')
    S = check_cu_seqlens(cu_seqlens, B, N)
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2:
            raise ValueError('initial_state must be a pair (Hk [S, H, K, M], Hv [S, H, M, V])')
        check_same_device(q=q, initial_state_hk=initial_state[0], initial_state_hv=initial_state[1])
        check_initial_state(initial_state[0], (S, H, K, M), '[S, H, K, M]', 'initial_state[0] (Hk)', True)
        check_initial_state(initial_state[1], (S, H, M, V), '[S, H, M, V]', 'initial_state[1] (Hv)', True)


def _two_pass(q, k, v, s, g, scale, initial_state, output_final_state, cu_seqlens, reverse, chunk_size):
    hk0, hv0 = initial_state if initial_state is not None else (None, None)
    # the slot gate enters both passes in fp32: its two gradients then add in fp32 and round to g's dtype once
    # (rounded each, bf16 dL/dg had 2e-3 more error; the two partly cancel)
    g = g.float() if g.dtype in (torch.float16, torch.bfloat16) else g
    scores, hkt = chunk_gla_op(q, k, s, None, g, None, scale, hk0, output_final_state, cu_seqlens, reverse,
                               chunk_size)
    p = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
    o, hvt = chunk_gla_op(p, s, v, g, None, None, 1.0, hv0, output_final_state, cu_seqlens, reverse, chunk_size)
    return o, ((hkt, hvt) if output_final_state else None)


def gsa_triton(q, k, v, s, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
               reverse=False, chunk_size=CHUNK):
    """The Triton kernels of the gated core whatever the device (CPU tensors need ``TRITON_INTERPRET=1``)."""
    _check(q, k, v, s, g, initial_state, cu_seqlens)
    with kernel_options(backend='triton'):
        return _two_pass(q, k, v, s, g, scale, initial_state, output_final_state, cu_seqlens, reverse, chunk_size)


def gsa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: torch.Tensor, g: torch.Tensor, *,
        scale: Optional[float] = None, initial_state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, reverse: bool = False):
    """Gated slot attention (see :mod:`vla_mm.ops.gsa.reference` for the recurrence).

    Args:
        q, k: ``[B, N, H, K]``; v: ``[B, N, H, V]``; one dtype (fp32, fp16, bf16; float64 takes the reference),
            K <= 256.
        s: slot write weights ``[B, N, H, M]`` (M <= 256 slots), in q's dtype.
        g: log forget gates per slot ``[B, N, H, M]`` (<= 0), any float dtype.
        scale: of the slot scores, default ``K ** -0.5``.
        initial_state: ``(Hk [S, H, K, M], Hv [S, H, M, V])``.
        output_final_state: also return the fp32 final ``(Hk, Hv)``.
        cu_seqlens: ``[S + 1]`` boundaries of packed sequences (B must be 1).
        reverse: run right to left without flipping any tensor.

    Returns:
        ``(o [B, N, H, V], (Hk, Hv) or None)``.
    """
    _check(q, k, v, s, g, initial_state, cu_seqlens)
    return _two_pass(q, k, v, s, g, scale, initial_state, output_final_state, cu_seqlens, reverse, CHUNK)
