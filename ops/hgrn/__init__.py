"""HGRN's elementwise gated recurrence as a chunked parallel scan.

Public op: :func:`hgrn`. Triton entry point (tests, interpreter): :func:`hgrn_triton`.
Reference (step by step, the truth): :func:`hgrn_recurrent_reference`.
"""
from typing import Optional, Tuple

import torch

from ..common import check_dtype, check_same_device, use_triton
from .reference import hgrn_recurrent_reference
from .scan import hgrn_triton

__all__ = ['hgrn', 'hgrn_triton', 'hgrn_recurrent_reference']


def hgrn(x: torch.Tensor, g: torch.Tensor, *, initial_state: Optional[torch.Tensor] = None,
         output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, reverse: bool = False,
         gated_input: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """HGRN recurrence ``h_t = exp(g_t) * h_{t-1} + (1 - exp(g_t)) * x_t``, output ``o_t = h_t``.

    Args:
        x: inputs ``[B, N, D]`` (fp32, fp16 or bf16; D = heads * head_dim, channels are independent).
        g: log forget gates ``[B, N, D]`` (<= 0; e.g. ``logsigmoid`` of a projection, with HGRN's lower bound
            applied by the caller). Any float dtype; the scan runs in fp32.
        initial_state: ``[S, D]`` (S = B, or the number of packed sequences).
        output_final_state: also return the fp32 final state ``[S, D]``.
        cu_seqlens: ``[S + 1]`` int boundaries of packed sequences (then B must be 1).
        reverse: run right to left without flipping any tensor.
        gated_input: ``False`` drops the ``(1 - exp(g_t))`` factor: ``h_t = exp(g_t) h_{t-1} + x_t``
            (flash-linear-attention's ``hgrn`` form, where the layer gates the input itself).

    Returns:
        ``(o [B, N, D] in x's dtype, final_state or None)``.
    """
    for name, t in (('x', x), ('g', g), ('initial_state', initial_state)):
        if t is not None:
            check_dtype(name, t)
    check_same_device(x=x, g=g, initial_state=initial_state, cu_seqlens=cu_seqlens)
    if x.dim() != 3:
        raise ValueError(f'x must be [B, N, D], got shape {tuple(x.shape)}')
    if g.shape != x.shape:
        raise ValueError(f'g must have the shape of x {tuple(x.shape)}, got {tuple(g.shape)}')
    B, N, D = x.shape
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
    if initial_state is not None and initial_state.shape != (S, D):
        raise ValueError(f'initial_state must be [S, D] = {(S, D)}, got {tuple(initial_state.shape)}')
    if use_triton(x, g, initial_state):
        return hgrn_triton(x, g, initial_state=initial_state, output_final_state=output_final_state,
                           cu_seqlens=cu_seqlens, reverse=reverse, gated_input=gated_input)
    return hgrn_recurrent_reference(x, g, initial_state=initial_state, output_final_state=output_final_state,
                                    cu_seqlens=cu_seqlens, reverse=reverse, gated_input=gated_input)
