"""LayerNorm and RMSNorm over the last dimension, fused: statistics, affine, an optional swish gate and the output
cast in one pass.

Public ops: :func:`layer_norm` (the custom op ``vla_mm::layer_norm``; ``rms=True`` is RMSNorm; ``gate``: times
``swish(gate)``, the gated output norm of GLA, RetNet, HGRN and others) and :func:`add_layer_norm`
(``vla_mm::add_layer_norm``: the pre-norm residual ``s = x + residual`` and its norm in one pass, forward and
backward; a block's ``x = x + branch; norm2(x)`` without the separate add and gradient sum). Reference:
:func:`norm_reference`. What it saves against ``torch.nn.functional.layer_norm`` under autocast: the output is
written in the autocast dtype directly (``out_dtype``), where autocast runs LayerNorm in fp32 and the next
matmul casts its fp32 output again; the backward computes the weight and bias gradients from per-program
partial sums in the same pass as the input gradient.
"""
from typing import Optional

import torch

from ..common import check_dtype, check_same_device, kernel_options, register_op, use_triton
from .kernel import MAX_C, norm_bwd, norm_fwd
from .reference import norm_reference

__all__ = ['layer_norm', 'add_layer_norm', 'layer_norm_triton', 'norm_reference', 'MAX_C']

_DTYPES = {'': None, 'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16,
           'float64': torch.float64}


def _out_dtype(x, name):
    return _DTYPES[name] or x.dtype


def _check(x, weight, bias, out_dtype, gate=None):
    check_dtype('x', x, allow_float64=True)
    check_same_device(x=x, weight=weight, bias=bias, gate=gate)
    if gate is not None:
        check_dtype('gate', gate, allow_float64=True)
        if gate.shape != x.shape:
            raise ValueError(f'gate must have the shape of x {tuple(x.shape)}, got {tuple(gate.shape)}')
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f'x must be [..., C] with C >= 1, got shape {tuple(x.shape)}')
    C = x.shape[-1]
    if C > MAX_C:
        raise ValueError(f'the normalized dimension C = {C} is over {MAX_C}')
    for name, t in (('weight', weight), ('bias', bias)):
        if t is not None:
            check_dtype(name, t, allow_float64=True)
            if t.shape != (C,):
                raise ValueError(f'{name} must be [C] = [{C}], got {tuple(t.shape)}')
    if out_dtype not in _DTYPES.values() or (out_dtype is not None and not out_dtype.is_floating_point):
        raise ValueError(f'out_dtype must be one of float32, bfloat16, float16, float64 or None, got {out_dtype}')


def _reference(x, weight, bias, gate, eps, rms, out_dtype):
    return (norm_reference(x, weight, bias, eps, rms, _out_dtype(x, out_dtype), gate),)


def _triton(x, weight, bias, gate, eps, rms, out_dtype):
    y, mean, rstd = norm_fwd(x, weight, bias, eps, rms, _out_dtype(x, out_dtype), gate)
    return (y,), (mean, rstd)


def _triton_backward(grads, outputs, saved, x, weight, bias, gate, eps, rms, out_dtype):
    dy = grads[0] if grads[0] is not None else torch.zeros_like(outputs[0])
    return list(norm_bwd(dy, x, weight, bias, saved[0], saved[1], rms, gate))


def _stats_fake(x, *tensors):
    """The per-row mean and rstd the kernels keep for the backward (none on the reference path)."""
    if not use_triton(x, *tensors):
        return []
    M = x.numel() // x.shape[-1]
    return [x.new_empty((M,), dtype=torch.float32), x.new_empty((M,), dtype=torch.float32)]


def _fake(x, weight, bias, gate, eps, rms, out_dtype):
    return [x.new_empty(x.shape, dtype=_out_dtype(x, out_dtype))] + _stats_fake(x, weight, bias, gate)


_norm_op = register_op(
    'layer_norm', '(Tensor x, Tensor? weight, Tensor? bias, Tensor? gate, float eps, bool rms, str out_dtype)',
    outputs=1, grads=('x', 'weight', 'bias', 'gate'), reference=_reference, triton=_triton,
    triton_backward=_triton_backward, fake=_fake, saves=('x', 'weight', 'bias', 'gate'), saves_outputs=())

_NAMES = {v: k for k, v in _DTYPES.items()}


def _add_reference(x, residual, weight, bias, eps, rms, out_dtype):
    s = x + residual
    return norm_reference(s, weight, bias, eps, rms, _out_dtype(s, out_dtype)), s


def _add_triton(x, residual, weight, bias, eps, rms, out_dtype):
    s_dtype = torch.promote_types(x.dtype, residual.dtype)
    y, mean, rstd, s = norm_fwd(x, weight, bias, eps, rms, _DTYPES[out_dtype] or s_dtype, residual=residual)
    return (y, s), (mean, rstd)


def _add_triton_backward(grads, outputs, saved, x, residual, weight, bias, eps, rms, out_dtype):
    dy = grads[0] if grads[0] is not None else torch.zeros_like(outputs[0])
    s = outputs[1]
    dsum, dw, db, _, dsum2 = norm_bwd(dy, s, weight, bias, saved[0], saved[1], rms, ds=grads[1],
                                      dx2_dtype=x.dtype if x.dtype != s.dtype else residual.dtype)
    # s's dtype is one of the two inputs'; the other one gets the copy in its own dtype
    return [dsum2, dsum, dw, db] if x.dtype != s.dtype else [dsum, dsum2, dw, db]


def _add_fake(x, residual, weight, bias, eps, rms, out_dtype):
    s = torch.empty_like(x, dtype=torch.promote_types(x.dtype, residual.dtype), memory_format=torch.contiguous_format)
    return [s.new_empty(s.shape, dtype=_out_dtype(s, out_dtype)), s] + _stats_fake(x, residual, weight, bias)


_add_norm_op = register_op(
    'add_layer_norm', '(Tensor x, Tensor residual, Tensor? weight, Tensor? bias, float eps, bool rms, str out_dtype)',
    outputs=2, grads=('x', 'residual', 'weight', 'bias'), reference=_add_reference, triton=_add_triton,
    triton_backward=_add_triton_backward, fake=_add_fake, saves=('weight', 'bias'), saves_outputs=(1,))


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, eps: float = 1e-5, *, rms: bool = False,
                   out_dtype: Optional[torch.dtype] = None):
    """``s = x + residual`` and ``layer_norm(s, ...)`` in one pass: returns ``(y, s)``.

    The pre-norm residual of a block (``x`` the branch, e.g. bf16 under autocast; ``residual`` the stream, e.g.
    fp32): s in their promoted dtype, as ``x + residual``; y in ``out_dtype`` (default s's). The backward adds the
    gradient that reaches s directly to the norm's input gradient and writes it for both inputs in one pass.
    """
    _check(x, weight, bias, out_dtype)
    check_dtype('residual', residual, allow_float64=True)
    check_same_device(x=x, residual=residual)
    if residual.shape != x.shape:
        raise ValueError(f'residual must have the shape of x {tuple(x.shape)}, got {tuple(residual.shape)}')
    return tuple(_add_norm_op(x, residual, weight, bias, float(eps), bool(rms), _NAMES[out_dtype]))


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5, *, rms: bool = False, out_dtype: Optional[torch.dtype] = None,
               gate: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LayerNorm (``rms=False``) or RMSNorm (``rms=True``, no mean, bias allowed) of x over its last dimension,
    times ``swish(gate)`` when a gate is given.

    Args:
        x: ``[..., C]`` (fp32, fp16, bf16; float64 takes the reference), C <= ``MAX_C``; any layout (rows are
            read in place when the last dimension is contiguous, else copied).
        weight, bias: ``[C]`` or None (any float dtype; the gradients come back in their dtypes).
        eps: added to the variance (mean square).
        out_dtype: dtype of y (default x's): ``torch.bfloat16`` under autocast writes what the next matmul reads.
        gate: optional, x's shape (any float dtype): y is multiplied by ``gate * sigmoid(gate)`` (in fp32).

    Returns:
        y ``[..., C]``; statistics and arithmetic in fp32 (float64 for float64 x).
    """
    _check(x, weight, bias, out_dtype, gate)
    return _norm_op(x, weight, bias, gate, float(eps), bool(rms), _NAMES[out_dtype])[0]


def layer_norm_triton(x, weight=None, bias=None, eps=1e-5, *, rms=False, out_dtype=None, gate=None):
    """The Triton kernels whatever the device (CPU tensors need ``TRITON_INTERPRET=1``)."""
    _check(x, weight, bias, out_dtype, gate)
    with kernel_options(backend='triton'):
        return _norm_op(x, weight, bias, gate, float(eps), bool(rms), _NAMES[out_dtype])[0]
