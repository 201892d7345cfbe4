"""Norm layers from configs: mmcv's ``build_norm_layer`` over vla_mm's registry, which adds ``RMSNorm``.

``dict(type='LN', eps=1e-6)`` and every other norm of MMEngine's root registry (``BN``, ``GN``, ``SyncBN``...)
resolve as in mmcv; ``dict(type='RMSNorm', eps=1e-6)`` is ``torch.nn.RMSNorm`` (mmcv 2.1.0 registers none).
``LayerNorm2d`` (a channel LayerNorm of ``[B, C, H, W]`` maps) is mmpretrain's: it returns NCHW-contiguous maps,
which mmcv's RoIAlign needs (it reads raw memory as NCHW; see ``vla_mm/compat/mmcv_ops.py``).
"""
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmpretrain.models.utils import LayerNorm2d

from ...registry import MODELS

__all__ = ['build_norm', 'LayerNorm2d']

MODELS.register_module('RMSNorm', module=nn.RMSNorm)


def build_norm(cfg, num_features):
    """The norm module of ``cfg`` (``type`` a registered name or a class) over ``num_features`` channels."""
    cfg = dict(cfg)
    if isinstance(cfg.get('type'), str):
        cls = MODELS.get(cfg['type'])  # vla_mm's registry, then MMEngine's root (whatever the default scope)
        if cls is None:
            raise KeyError(f"norm type {cfg['type']!r} is not registered (vla_mm or MMEngine's root registry)")
        cfg['type'] = cls
    return build_norm_layer(cfg, num_features)[1]
