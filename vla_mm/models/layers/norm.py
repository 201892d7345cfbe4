"""Norm layers from configs: mmcv's ``build_norm_layer`` over vla_mm's registry, which adds ``RMSNorm`` and the
fused ``FusedLN`` / ``FusedRMSNorm``.

``dict(type='LN', eps=1e-6)`` and every other norm of MMEngine's root registry (``BN``, ``GN``, ``SyncBN``...)
resolve as in mmcv; ``dict(type='RMSNorm', eps=1e-6)`` is ``torch.nn.RMSNorm`` (mmcv 2.1.0 registers none).
``dict(type='FusedLN', eps=1e-6)`` / ``dict(type='FusedRMSNorm', eps=1e-6)`` are ``nn.LayerNorm`` /
``nn.RMSNorm`` (same parameters and state dict) computed by :func:`vla_mm.ops.norm.layer_norm`: one Triton pass
on CUDA that writes the autocast dtype directly (see :class:`FusedLayerNorm`).
``LayerNorm2d`` (a channel LayerNorm of ``[B, C, H, W]`` maps) is mmpretrain's: it returns NCHW-contiguous maps,
which mmcv's RoIAlign needs (it reads raw memory as NCHW; see ``vla_mm/compat/mmcv_ops.py``).
"""
import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmpretrain.models.utils import LayerNorm2d

from vla_mm.ops.common import use_triton
from vla_mm.ops.norm import add_layer_norm, layer_norm
from ...registry import MODELS

__all__ = ['build_norm', 'resolve_norm_cfg', 'fused_norm_ok', 'MIN_ROWS', 'LayerNorm2d', 'FusedLayerNorm',
           'FusedRMSNorm']

MODELS.register_module('RMSNorm', module=nn.RMSNorm)


def _out_dtype(x, dtype=None):
    """The dtype the next autocast matmul would cast the norm's output to (outside autocast ``dtype``, by default
    x's)."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else (dtype or x.dtype)


def fused_norm_ok(*tensors):
    """Does a norm of these tensors take the Triton op? Not under tracing (``torch.compile``: Inductor fuses
    torch's norm itself; ``torch.jit``: FLOP counting) nor where the op would run its reference (CPU: torch's own
    norm is the faster reference there)."""
    return not (torch.compiler.is_compiling() or torch.jit.is_tracing()) and use_triton(*tensors)


# rows under which the fused norms run torch's: there a step is host-bound and the op's ~0.25 ms more host time a
# call (fwd+bwd, H100 host) outweighs the GPU time it saves (docs/ops.md, "FusedLN below min_rows")
MIN_ROWS = 32768


def _fused_ok(module, x):
    return (len(module.normalized_shape) == 1 and x.numel() >= module.min_rows * x.shape[-1]
            and fused_norm_ok(x, module.weight))


def _add_norm(module, x, residual, bias, eps, rms):
    """``(module(s), s)`` with ``s = residual + x``: the fused op where ``module`` takes its kernels, else the add
    then the module (``eps`` None: the sum's dtype's machine epsilon, as ``nn.RMSNorm``)."""
    if not (_fused_ok(module, x) and fused_norm_ok(residual)):
        s = residual + x
        return module(s), s
    s_dtype = torch.promote_types(x.dtype, residual.dtype)
    eps = eps if eps is not None else torch.finfo(s_dtype).eps
    return add_layer_norm(x, residual, module.weight, bias, eps, rms=rms, out_dtype=_out_dtype(x, s_dtype))


class _MinRows:
    """The ``min_rows`` argument of the fused norms (see :data:`MIN_ROWS`)."""

    def __init__(self, *args, min_rows=MIN_ROWS, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_rows = min_rows


@MODELS.register_module('FusedLN')
class FusedLayerNorm(_MinRows, nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension through :func:`vla_mm.ops.norm.layer_norm`.

    Under autocast the output is in the autocast dtype (bf16), where ``nn.LayerNorm`` returns fp32 that the next
    matmul casts to bf16 in a separate pass: the same values reach that matmul. Consumers that are not autocast
    matmuls see the bf16 value. ``torch.compile``, ``torch.jit`` and CPU tensors run ``nn.LayerNorm`` and cast
    its output the same way, and so do inputs of fewer than ``min_rows`` rows (default :data:`MIN_ROWS`).
    """

    def forward(self, x):
        if not _fused_ok(self, x):
            return super().forward(x).to(_out_dtype(x))
        return layer_norm(x, self.weight, self.bias, self.eps, out_dtype=_out_dtype(x))

    def add_forward(self, x, residual):
        """``(norm(s), s)`` of the pre-norm residual ``s = residual + x`` (a block's stream plus its branch): one
        pass through :func:`vla_mm.ops.norm.add_layer_norm` where the op runs its kernels, else the add then
        :meth:`forward`."""
        return _add_norm(self, x, residual, self.bias, self.eps, rms=False)


@MODELS.register_module('FusedRMSNorm')
class FusedRMSNorm(_MinRows, nn.RMSNorm):
    """``nn.RMSNorm`` through :func:`vla_mm.ops.norm.layer_norm` (``rms=True``); as :class:`FusedLayerNorm`."""

    def forward(self, x):
        if not _fused_ok(self, x):
            return super().forward(x).to(_out_dtype(x))
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return layer_norm(x, self.weight, None, eps, rms=True, out_dtype=_out_dtype(x))

    def add_forward(self, x, residual):
        """As :meth:`FusedLayerNorm.add_forward`, RMSNorm."""
        return _add_norm(self, x, residual, None, self.eps, rms=True)


def resolve_norm_cfg(cfg):
    """``cfg`` with its ``type`` name replaced by the class (vla_mm's registry, then MMEngine's root), so that
    mmcv's own ``build_norm_layer`` calls (``PatchEmbed``...) find vla_mm's norms whatever the default scope."""
    cfg = dict(cfg)
    if isinstance(cfg.get('type'), str):
        cls = MODELS.get(cfg['type'])
        if cls is None:
            raise KeyError(f"norm type {cfg['type']!r} is not registered (vla_mm or MMEngine's root registry)")
        cfg['type'] = cls
    return cfg


def build_norm(cfg, num_features):
    """The norm module of ``cfg`` (``type`` a registered name or a class) over ``num_features`` channels."""
    return build_norm_layer(resolve_norm_cfg(cfg), num_features)[1]
