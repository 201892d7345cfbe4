"""The short convolution: depthwise, causal in the pass's direction, W taps (the ``ShortConvolution`` of the
GLA / HGRN / DeltaNet language-model layers), with its bias and SiLU fused.

Public op: :func:`short_conv` (the custom op ``vla_mm::short_conv``). Triton entry point (tests, interpreter):
:func:`short_conv_triton`. Reference: :func:`short_conv_reference`. What it saves against the same sum in torch
ops (a window view times the weight, summed over taps): the ``[B, N, C, W]`` fp32 product, written and read
again in the forward and once more in the backward, and the separate bias, SiLU and cast passes.
"""
from typing import Optional

import torch

from ..common import check_dtype, check_same_device, kernel_options, register_op, use_triton
from ..common.varlen import seq_positions
from .kernel import MAX_W, short_conv_bwd, short_conv_fwd
from .reference import short_conv_reference

__all__ = ['short_conv', 'short_conv_triton', 'short_conv_reference', 'MAX_W']

ACTIVATIONS = ('', 'silu')


def _check(x, weight, bias, activation, cu_seqlens):
    check_dtype('x', x, allow_float64=True)
    check_dtype('weight', weight, allow_float64=True)
    check_same_device(x=x, weight=weight, bias=bias, cu_seqlens=cu_seqlens)
    if x.dim() != 3 or min(x.shape) < 1:
        raise ValueError(f'x must be [B, N, C] with B, N, C >= 1, got shape {tuple(x.shape)}')
    C = x.shape[-1]
    if weight.dim() != 2 or weight.shape[0] != C or not 1 <= weight.shape[1] <= MAX_W:
        raise ValueError(f'weight must be [C, W] = [{C}, W] with 1 <= W <= {MAX_W}, got {tuple(weight.shape)}')
    if bias is not None:
        check_dtype('bias', bias, allow_float64=True)
        if bias.shape != (C,):
            raise ValueError(f'bias must be [C] = [{C}], got {tuple(bias.shape)}')
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    if cu_seqlens is not None:  # its values are not read on the host: the kernels need no plan of the sequences
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise ValueError('cu_seqlens must be a 1-D int32/int64 tensor [S + 1] of sequence boundaries, got '
                             f'{cu_seqlens.dtype} {tuple(cu_seqlens.shape)}')
        if x.shape[0] != 1:
            raise ValueError(f'cu_seqlens needs packed inputs with B == 1, got B = {x.shape[0]}')


def _reference(x, weight, bias, cu_seqlens, activation, reverse):
    return (short_conv_reference(x, weight, bias, activation, reverse, cu_seqlens),)


def _triton(x, weight, bias, cu_seqlens, activation, reverse):
    """The output, and for packed sequences the tokens' positions (kept: the backward reads them too)."""
    pos = seq_positions(x.shape[1], cu_seqlens, reverse) if cu_seqlens is not None else None
    return (short_conv_fwd(x, weight, bias, pos, activation, reverse),), (() if pos is None else (pos,))


def _triton_backward(grads, outputs, saved, x, weight, bias, cu_seqlens, activation, reverse):
    dy = grads[0] if grads[0] is not None else torch.zeros_like(outputs[0])
    return list(short_conv_bwd(dy, x, weight, bias, saved[0] if saved else None, activation, reverse))


def _fake(x, weight, bias, cu_seqlens, activation, reverse):
    kept = cu_seqlens is not None and use_triton(x, weight, bias, cu_seqlens)
    return [x.new_empty(x.shape)] + ([x.new_empty((x.shape[1],), dtype=torch.int64)] if kept else [])


_conv_op = register_op(
    'short_conv', '(Tensor x, Tensor weight, Tensor? bias, Tensor? cu_seqlens, str activation, bool reverse)',
    outputs=1, grads=('x', 'weight', 'bias'), reference=_reference, triton=_triton,
    triton_backward=_triton_backward, fake=_fake, saves_outputs=())


def short_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
               activation: Optional[str] = None, reverse: bool = False,
               cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depthwise convolution of ``W`` taps along the tokens, causal in the pass's direction:
    ``o_t = act(b + sum_i w_i x_{t-(W-1)+i})``, under ``reverse`` ``x_{t+(W-1)-i}`` (so a reversed pass equals the
    forward pass of the flipped sequence); a tap before the start of its sequence reads zero.

    Args:
        x: ``[B, N, C]`` (fp32, fp16 or bf16; float64 takes the reference); any batch and token strides.
        weight: ``[C, W]`` taps, ``W <= MAX_W`` (any float dtype; the sum runs in fp32).
        bias: ``[C]`` or None.
        activation: None or ``'silu'``.
        reverse: run right to left without flipping any tensor.
        cu_seqlens: ``[S + 1]`` int boundaries of packed sequences (then B must be 1).

    Returns:
        ``[B, N, C]`` in x's dtype.
    """
    _check(x, weight, bias, activation or '', cu_seqlens)
    return _conv_op(x, weight, bias, cu_seqlens, activation or '', bool(reverse))[0]


def short_conv_triton(x, weight, bias=None, activation=None, reverse=False, cu_seqlens=None):
    """The Triton kernels whatever the device (CPU tensors need ``TRITON_INTERPRET=1``)."""
    _check(x, weight, bias, activation or '', cu_seqlens)
    with kernel_options(backend='triton'):
        return _conv_op(x, weight, bias, cu_seqlens, activation or '', bool(reverse))[0]
