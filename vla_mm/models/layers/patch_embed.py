"""Stems: image ``[B, C, H, W]`` -> tokens ``[B, N, D]`` and their grid ``(h, w)``.

``'patch'`` is mmcv's ``PatchEmbed`` (one ``patch_size`` conv; inputs whose sides are not multiples of the patch
are padded at the bottom / right, so dense tasks take any size such as 1333x800). ``'conv'`` is a convolutional
stem with the same interface and padding.
"""
import torch.nn as nn
from mmcv.cnn.bricks.transformer import AdaptivePadding, PatchEmbed
from mmengine.model import BaseModule

from .norm import build_norm, resolve_norm_cfg

__all__ = ['PatchEmbed', 'ConvStem', 'STEMS', 'build_stem']


class ConvStem(BaseModule):
    """Convolutional stem: stride-2 3x3 conv + BN + ReLU blocks down to the patch stride, then a 1x1 projection.

    Xiao et al., "Early Convolutions Help Transformers See Better" (NeurIPS 2021): replacing the patchify conv by
    a few small convolutions makes ViTs train faster and more stably, which matters most on small data. mmcv's
    ``PatchEmbed`` forward (padding, flatten, optional norm) over this projection (``patch_size`` a power of two).
    ``convs_per_stage > 1`` adds stride-1 convs after each stride-2 one (more local capacity before the mixers).
    """

    forward = PatchEmbed.forward

    def __init__(self, in_channels=3, embed_dims=768, patch_size=16, convs_per_stage=1, norm_cfg=None):
        super().__init__()
        n = patch_size.bit_length() - 1
        if patch_size < 2 or 2 ** n != patch_size:
            raise ValueError(f'ConvStem needs a power-of-two patch_size >= 2, got {patch_size}')
        self.adaptive_padding = AdaptivePadding(kernel_size=patch_size, stride=patch_size, padding='corner')
        layers, c = [], in_channels
        for i in range(n):
            out = max(embed_dims // 2 ** (n - i), 16)
            for j in range(convs_per_stage):  # the first conv of a stage halves the resolution
                layers += [nn.Conv2d(c, out, 3, stride=2 if j == 0 else 1, padding=1, bias=False),
                           nn.BatchNorm2d(out), nn.ReLU(True)]
                c = out
        layers.append(nn.Conv2d(c, embed_dims, 1))
        self.projection = nn.Sequential(*layers)
        self.norm = build_norm(norm_cfg, embed_dims) if norm_cfg else None


def _patch(in_channels, embed_dims, patch_size, norm_cfg=None, **kwargs):
    return PatchEmbed(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size, padding='corner',
                      norm_cfg=norm_cfg, **kwargs)


#: stems by short name: ``stem='patch'`` or ``dict(type='conv', convs_per_stage=2)``
STEMS = dict(patch=_patch, conv=ConvStem)


def build_stem(stem, in_channels, embed_dims, patch_size, norm_cfg=None):
    """The stem of ``stem`` (a name of :data:`STEMS` or a dict with ``type`` and its options)."""
    cfg = dict(type=stem) if isinstance(stem, str) else dict(stem)
    kind = cfg.pop('type', 'patch')
    if kind not in STEMS:
        raise KeyError(f'stem {kind!r} is not one of {sorted(STEMS)}')
    norm_cfg = resolve_norm_cfg(norm_cfg) if norm_cfg else None
    return STEMS[kind](in_channels, embed_dims, patch_size, norm_cfg=norm_cfg, **cfg)
