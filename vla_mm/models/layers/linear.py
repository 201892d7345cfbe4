"""``BiasGradLinear``: ``nn.Linear`` whose eager CUDA backward takes the bias gradient from
:func:`vla_mm.ops.reduce.sum_rows` instead of torch's ``sum(0)``.

Why: a linear layer's bias gradient is its output gradient summed over the tokens, which torch's reduction
reads at about half the memory bandwidth (docs/ops.md, "The sum over rows"). Same parameters and state dict as
``nn.Linear``; the forward is ``F.linear`` in the autocast dtype as autocast runs it, the input and weight
gradients the same matrix products as autograd's. Under ``torch.compile`` / ``torch.jit`` tracing, on CPU and
without a bias it is ``nn.Linear``. :func:`use_bias_grad_op` turns a model's linear layers into it in place.
Config: ``dict(type='BiasGradLinear')`` as a mixer's ``linear_cfg``. Opt-in: it takes kernel time off the step but
adds host time, which costs more where the eager step is host-bound (docs/ops.md, "The sum over rows").
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vla_mm.ops.reduce import sum_rows

from ...registry import MODELS
from .norm import fused_norm_ok

__all__ = ['BiasGradLinear', 'use_bias_grad_op']


class _LinearBiasGrad(torch.autograd.Function):
    """``F.linear(x, W, b)`` in ``dtype`` (the autocast dtype, or x's): dx = g W, dW = g^T x as autograd computes
    them, db = ``sum_rows(g)`` in fp32."""

    @staticmethod
    def forward(ctx, x, weight, bias, dtype):
        xc, wc, bc = (t.to(dtype) for t in (x, weight, bias))
        ctx.save_for_backward(xc, wc)
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(xc, wc, bc)

    @staticmethod
    def backward(ctx, g):
        xc, wc = ctx.saved_tensors
        x_dt, w_dt, b_dt = ctx.dtypes
        g = g.to(wc.dtype)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = (g @ wc).to(x_dt)
        if ctx.needs_input_grad[1]:
            dw = (g.reshape(-1, g.shape[-1]).t() @ xc.reshape(-1, xc.shape[-1])).to(w_dt)
        if ctx.needs_input_grad[2]:
            db = sum_rows(g).to(b_dt)
        return dx, dw, db, None


@MODELS.register_module('BiasGradLinear')
class BiasGradLinear(nn.Linear):
    """``nn.Linear`` with the bias gradient from ``sum_rows`` in eager CUDA runs (module docstring)."""

    def forward(self, x):
        if self.bias is None or not fused_norm_ok(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        return _LinearBiasGrad.apply(x, self.weight, self.bias, dtype)


def use_bias_grad_op(module: nn.Module) -> nn.Module:
    """Every ``nn.Linear`` in ``module`` (mmcv's ``Linear`` too: a subclass adding nothing to its forward but
    torch < 1.5 fixes) becomes a :class:`BiasGradLinear` in place, keeping its parameters; other subclasses
    (``BitLinear``) are left alone. Returns ``module``."""
    from mmcv.cnn import Linear as MMCVLinear
    for m in module.modules():
        if type(m) in (nn.Linear, MMCVLinear):
            m.__class__ = BiasGradLinear
    return module
