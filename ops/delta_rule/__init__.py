"""Delta rule core: DeltaNet and Gated DeltaNet, chunked through the UT / WY representation.

Public op: :func:`delta_rule`. Triton entry point (tests, interpreter): :func:`delta_rule_triton`.
References: :func:`delta_rule_recurrent` (step by step, the truth), :func:`delta_rule_chunked` (same algebra as
the kernels, in PyTorch).
"""
from typing import Optional, Tuple

import torch

from ..common import check_dtype, check_qkv, check_same_device, use_triton
from .chunk import delta_rule_triton
from .reference import delta_rule_chunked, delta_rule_recurrent

__all__ = ['delta_rule', 'delta_rule_triton', 'delta_rule_recurrent', 'delta_rule_chunked']

MAX_HEAD_DIM_K = 256


def _check(q, k, v, beta, g, initial_state, cu_seqlens):
    for name, t in (('q', q), ('k', k), ('v', v), ('beta', beta), ('g', g)):
        if t is not None:
            check_dtype(name, t)
    check_same_device(q=q, k=k, v=v, beta=beta, g=g, initial_state=initial_state, cu_seqlens=cu_seqlens)
    B, N, H, K = check_qkv(q, k, v, MAX_HEAD_DIM_K)
    if beta.shape != (B, N, H):
        raise ValueError(f'beta must be [B, N, H] = {(B, N, H)}, got {tuple(beta.shape)}')
    if g is not None and g.shape != (B, N, H):
        raise ValueError(f'g must be [B, N, H] = {(B, N, H)} (one log gate per head and token), '
                         f'got {tuple(g.shape)}')
    S = B
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f'cu_seqlens needs packed inputs with B == 1, got B = {B}')
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError('cu_seqlens must be a 1-D int32/int64 tensor [S + 1] of sequence boundaries')
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != N or any(b < a for a, b in zip(cu[:-1], cu[1:])):
            raise ValueError(f'cu_seqlens must rise from 0 to N = {N}, got {cu}')
        S = len(cu) - 1
    if initial_state is not None:
        if initial_state.shape != (S, H, K, v.shape[-1]):
            raise ValueError(f'initial_state must be [S, H, K, V] = {(S, H, K, v.shape[-1])}, '
                             f'got {tuple(initial_state.shape)}')
        check_dtype('initial_state', initial_state)


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               g: Optional[torch.Tensor] = None, *, scale: Optional[float] = None,
               initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
               cu_seqlens: Optional[torch.Tensor] = None, reverse: bool = False
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Delta rule (DeltaNet) or, with ``g``, gated delta rule (Gated DeltaNet) over a 1-D token order.

    Recurrence per batch element and head, state ``S_t`` [V, K] (stored transposed, ``[K, V]``)::

        DeltaNet:        S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T
        Gated DeltaNet:  S_t = exp(g_t) S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T
        o_t = scale * S_t q_t

    Args:
        q, k: [B, N, H, K] queries and keys (K <= 256). Keys are expected to be L2-normalised along K by the
            caller (as in DeltaNet / Gated DeltaNet); unnormalised keys still compute the recurrence exactly,
            but with ``beta * |k|^2 > 2`` the recurrence itself is unstable and grows.
        v: [B, N, H, V] values.
        beta: [B, N, H] write strengths, expected in (0, 1) (e.g. a sigmoid).
        g: optional [B, N, H] log-space decay per head and token (``log alpha_t <= 0``, e.g. -softplus(.)).
            None gives plain DeltaNet. Strong (-20) and weak (~0) decay are both exact and finite.
        scale: output scale, default ``K ** -0.5``.
        initial_state: optional [S, H, K, V] state (S = B, or the number of sequences with ``cu_seqlens``);
            with ``reverse=True`` it is the state to the right of the last token.
        output_final_state: also return the final state [S, H, K, V] (float32 on the Triton path).
        cu_seqlens: optional int [S + 1] boundaries of packed sequences in N (requires B == 1).
        reverse: run each sequence right to left (token N-1 first); no flipped copy is made.

    Returns:
        (o [B, N, H, V] in the dtype of q, final_state or None). All arithmetic and the state are float32 on
        the Triton path; the reference computes in the promoted input dtype (float32 at least).

    Dispatch: CUDA tensors -> Triton kernels (:mod:`.chunk`), CPU tensors or ``VLA_OPS_REFERENCE=1`` -> the
    step-by-step PyTorch reference (differentiable through autograd).
    """
    _check(q, k, v, beta, g, initial_state, cu_seqlens)
    if use_triton(q, k, v, beta, g, initial_state):
        return delta_rule_triton(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                                 output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)
    o, ht = delta_rule_recurrent(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                                 output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)
    return o.to(q.dtype), ht
