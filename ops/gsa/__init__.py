"""GSA / ABC (gated slot attention): two passes of the gated linear attention core with a softmax over the
slots between them.

Public op: :func:`gsa`. Triton entry point: :func:`gsa_triton`. Reference: :func:`gsa_recurrent_reference`.

Pass 1 reads the key memory: ``chunk_gla(q, k, s, gv=g)`` (state ``[K, M]`` with the slot gate on its value
side) gives the slot scores; ``p = softmax(scores)`` over the M slots (fp32); pass 2 reads the value memory:
``chunk_gla(p, s, v, g, scale=1)`` (state ``[M, V]`` with the slot gate on its key side).
"""
from typing import Optional, Tuple

import torch

from ..common import check_dtype, check_same_device, use_triton
from ..gla.chunk import CHUNK, chunk_gla_triton
from ..gla.reference import gla_recurrent_reference
from .reference import gsa_recurrent_reference

__all__ = ['gsa', 'gsa_triton', 'gsa_recurrent_reference']


def _two_pass(gla_fn, q, k, v, s, g, scale, initial_state, output_final_state, cu_seqlens, reverse, **kw):
    hk0, hv0 = initial_state if initial_state is not None else (None, None)
    scores, hkt = gla_fn(q, k, s, gv=g, scale=scale, initial_state=hk0, output_final_state=output_final_state,
                         cu_seqlens=cu_seqlens, reverse=reverse, **kw)
    p = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    o, hvt = gla_fn(p, s, v, gk=g, scale=1.0, initial_state=hv0, output_final_state=output_final_state,
                    cu_seqlens=cu_seqlens, reverse=reverse, **kw)
    return o, ((hkt, hvt) if output_final_state else None)


def gsa_triton(q, k, v, s, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
               reverse=False, chunk_size=CHUNK):
    """Triton entry point (no argument checks): two launches of the gated core's kernels."""
    return _two_pass(chunk_gla_triton, q, k, v, s, g, scale, initial_state, output_final_state, cu_seqlens,
                     reverse, chunk_size=chunk_size)


def gsa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: torch.Tensor, g: torch.Tensor, *,
        scale: Optional[float] = None, initial_state: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, reverse: bool = False):
    """Gated slot attention (see :mod:`vla_mm.ops.gsa.reference` for the recurrence).

    Args:
        q, k: ``[B, N, H, K]``; v: ``[B, N, H, V]``; one dtype (fp32, fp16, bf16), K <= 256.
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
    for name, t in (('q', q), ('k', k), ('v', v), ('s', s), ('g', g)):
        check_dtype(name, t)
    check_same_device(q=q, k=k, v=v, s=s, g=g, cu_seqlens=cu_seqlens)
    if q.dim() != 4:
        raise ValueError(f'q must be [B, N, H, K], got shape {tuple(q.shape)}')
    B, N, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f'k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}')
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f'v must be [B, N, H, V] with B, N, H = {B, N, H}, got {tuple(v.shape)}')
    if s.dim() != 4 or s.shape[:3] != q.shape[:3]:
        raise ValueError(f's must be [B, N, H, M] with B, N, H = {B, N, H}, got {tuple(s.shape)}')
    if g.shape != s.shape:
        raise ValueError(f'g must have the shape of s {tuple(s.shape)}, got {tuple(g.shape)}')
    if not (k.dtype == v.dtype == s.dtype == q.dtype):
        raise ValueError(f'q, k, v, s must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}, {s.dtype}')
    M, V = s.shape[-1], v.shape[-1]
    if K > 256 or M > 256:
        raise ValueError(f'K and the slot count M must be <= 256, got K={K}, M={M}')
    S = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f'cu_seqlens needs packed inputs with B == 1, got B = {B}')
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != N or any(b < a for a, b in zip(cu[:-1], cu[1:])):
            raise ValueError(f'cu_seqlens must rise from 0 to N = {N}, got {cu}')
        S = len(cu) - 1
    if initial_state is not None:
        if (not isinstance(initial_state, (tuple, list)) or len(initial_state) != 2
                or initial_state[0].shape != (S, H, K, M) or initial_state[1].shape != (S, H, M, V)):
            raise ValueError(f'initial_state must be a pair (Hk [S, H, K, M] = {(S, H, K, M)}, '
                             f'Hv [S, H, M, V] = {(S, H, M, V)})')
    if use_triton(q, k, v, s, g):
        return gsa_triton(q, k, v, s, g, scale=scale, initial_state=initial_state,
                          output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)
    return _two_pass(gla_recurrent_reference, q, k, v, s, g, scale, initial_state, output_final_state, cu_seqlens,
                     reverse)
