"""The sum over rows: a linear layer's bias gradient (its output gradient summed over the tokens).

Public op: :func:`sum_rows` (the custom op ``vla_mm::sum_rows``). Triton entry point: :func:`sum_rows_triton`.
Reference: :func:`sum_rows_reference`. Why it exists: torch's reduction for a linear layer's bias gradient
(``AddmmBackward``'s ``sum(0)``) runs at about twice the time of reading the gradient once (docs/ops.md, "The sum
over rows"); :class:`vla_mm.models.layers.BiasGradLinear` takes the bias gradient from this op instead.
"""
import torch

from ..common import check_dtype, kernel_options, register_op
from .kernel import sum_rows_fwd
from .reference import sum_rows_reference

__all__ = ['sum_rows', 'sum_rows_triton', 'sum_rows_reference']


def _check(x):
    check_dtype('x', x, allow_float64=True)
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f'x must be [..., N] with N >= 1, got shape {tuple(x.shape)}')


def _reference(x):
    return (sum_rows_reference(x),)


def _triton(x):
    return (sum_rows_fwd(x),), ()


def _triton_backward(grads, outputs, saved, x):
    g = grads[0] if grads[0] is not None else torch.zeros_like(outputs[0])
    return [g.to(x.dtype).expand(x.shape)]


def _fake(x):
    return [x.new_empty((x.shape[-1],), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)]


_sum_rows_op = register_op('sum_rows', '(Tensor x)', outputs=1, grads=('x',), reference=_reference, triton=_triton,
                           triton_backward=_triton_backward, fake=_fake, saves=(), saves_outputs=())


def sum_rows(x: torch.Tensor) -> torch.Tensor:
    """``x [..., N]`` (fp32, fp16 or bf16; any row stride) summed over every leading dim: ``[N]`` in float32 (float64
    input: the reference, float64)."""
    _check(x)
    return _sum_rows_op(x)[0]


def sum_rows_triton(x):
    """The Triton kernel whatever the device (CPU tensors need ``TRITON_INTERPRET=1``)."""
    _check(x)
    with kernel_options(backend='triton'):
        return _sum_rows_op(x)[0]
