"""Delta rule core: DeltaNet and Gated DeltaNet, chunked through the UT / WY representation.

Public op: :func:`delta_rule` (the custom op ``vla_mm::delta_rule``; its Triton path runs ``chunk.py``'s
``delta_rule_fwd`` / ``delta_rule_bwd``). Triton entry point (tests, interpreter): :func:`delta_rule_triton`
(``chunk.py``, an autograd Function over the same two). References: :func:`delta_rule_recurrent` (step by step,
the truth), :func:`delta_rule_chunked` (same algebra as the kernels, in PyTorch).
"""
from typing import Optional, Tuple

import torch

from ..common import (check_cu_seqlens, check_dtype, check_initial_state, check_qkv, check_same_device,
                      register_op, use_triton)
from .chunk import check_kernel_args, delta_rule_bwd, delta_rule_fwd, delta_rule_triton, residual_meta
from .reference import delta_rule_chunked, delta_rule_recurrent

__all__ = ['delta_rule', 'delta_rule_triton', 'delta_rule_recurrent', 'delta_rule_chunked']

MAX_HEAD_DIM_K = 256


def _check(q, k, v, beta, g, initial_state, cu_seqlens):
    for name, t in (('q', q), ('k', k), ('v', v), ('beta', beta), ('g', g)):
        if t is not None:
            check_dtype(name, t, allow_float64=True)  # float64 takes the reference
    check_same_device(q=q, k=k, v=v, beta=beta, g=g, initial_state=initial_state, cu_seqlens=cu_seqlens)
    B, N, H, K = check_qkv(q, k, v, MAX_HEAD_DIM_K)
    if beta.shape != (B, N, H):
        raise ValueError(f'beta must be [B, N, H] = {(B, N, H)}, got {tuple(beta.shape)}')
    if g is not None and g.shape != (B, N, H):
        raise ValueError(f'g must be [B, N, H] = {(B, N, H)} (one log gate per head and token), '
                         f'got {tuple(g.shape)}')
    S = check_cu_seqlens(cu_seqlens, B, N)
    check_initial_state(initial_state, (S, H, K, v.shape[-1]), '[S, H, K, V]', allow_float64=True)
    check_kernel_args(B, N, H, K, v.shape[-1], packed=cu_seqlens is not None)


def _no_state(q):
    return torch.empty(0, dtype=torch.float32, device=q.device)


def _reference(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, reverse):
    o, ht = delta_rule_chunked(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                               output_final_state=output_final_state, cu_seqlens=cu_seqlens, reverse=reverse)
    return o.to(q.dtype), (ht if ht is not None else _no_state(q))


def _triton(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, reverse):
    (o, ht), saved = delta_rule_fwd(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens,
                                    reverse)
    return (o, ht if ht is not None else _no_state(q)), list(saved)


def _triton_backward(grads, outputs, saved, q, k, v, beta, g, scale, initial_state, output_final_state,
                     cu_seqlens, reverse):
    do, dht = grads
    return delta_rule_bwd(do, dht if output_final_state else None, saved, q, k, v, beta, g, scale, initial_state,
                          cu_seqlens, reverse)


def _fake(q, k, v, beta, g, scale, initial_state, output_final_state, cu_seqlens, reverse):
    B, N, H, K = q.shape
    S = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    dt = torch.promote_types(q.dtype, torch.float32)            # the reference's state dtype (Triton: float32)
    if initial_state is not None:
        dt = torch.promote_types(dt, initial_state.dtype)
    ht = q.new_empty((S, H, K, v.shape[-1]), dtype=dt) if output_final_state else _no_state(q)
    outs = [q.new_empty(v.shape), ht]
    if use_triton(q, k, v, beta, g, initial_state, cu_seqlens):
        outs += [q.new_empty(shape, dtype=dtype) for shape, dtype in residual_meta(q, v, g, cu_seqlens)]
    return outs


_delta_rule_op = register_op(
    'delta_rule', '(Tensor q, Tensor k, Tensor v, Tensor beta, Tensor? g, float scale, Tensor? initial_state, '
                  'bool output_final_state, Tensor? cu_seqlens, bool reverse)',
    outputs=2, grads=('q', 'k', 'v', 'beta', 'g', 'initial_state'), reference=_reference, triton=_triton,
    triton_backward=_triton_backward, fake=_fake, saves_outputs=())


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

    Dispatch (the custom op ``vla_mm::delta_rule``): CUDA tensors -> Triton kernels (:mod:`.chunk`), CPU
    tensors, float64 inputs or ``VLA_OPS_REFERENCE=1`` -> :func:`delta_rule_chunked` (plain PyTorch, batched).
    """
    _check(q, k, v, beta, g, initial_state, cu_seqlens)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    o, ht = _delta_rule_op(q, k, v, beta, g, scale, initial_state, bool(output_final_state), cu_seqlens,
                           bool(reverse))
    return o, (ht if output_final_state else None)
