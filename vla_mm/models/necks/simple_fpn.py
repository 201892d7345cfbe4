"""Simple feature pyramid for isotropic backbones (ViTDet, Li et al., "Exploring Plain Vision Transformer
Backbones for Object Detection", ECCV 2022).

An isotropic backbone has one stride (its patch size ``p``). ``SimpleFeaturePyramid`` turns its last map into
maps of strides 4/8/16/32 (by default) by up-sampling (stride-2 transposed convolutions) and down-sampling
(stride-2 max pooling) the one map, or, with several backbone outputs ("per-depth taps"), re-scales output ``i``
to stride ``i``. Each level then goes through a 1x1 and a 3x3 convolution with a channel norm, so the output is
a tuple of ``[B, out_channels, H/s, W/s]`` maps that mmseg's ``UPerHead`` and mmdet's ``FPN`` take as they take a
ResNet's stages.
"""
import math

import torch.nn as nn
from mmengine.model import BaseModule

from ...registry import MODELS
from ..layers import LayerNorm2d, build_norm


#: ``norm`` shorthands of :class:`SimpleFeaturePyramid` -> norm configs (mmpretrain's ``LayerNorm2d`` returns
#: NCHW-contiguous maps, which mmcv's RoIAlign needs: it reads raw memory as NCHW)
NORMS = dict(LN=dict(type=LayerNorm2d, eps=1e-6), GN=dict(type='GN', num_groups=32), BN=dict(type='BN'),
             SyncBN=dict(type='SyncBN'))


def make_norm(norm, channels):
    if norm in (None, 'none'):
        return nn.Identity()
    if norm not in NORMS:
        raise KeyError(f"norm {norm!r} is not one of {sorted(NORMS)} or None")
    cfg = dict(NORMS[norm])
    if 'num_groups' in cfg:
        cfg['num_groups'] = min(cfg['num_groups'], channels)
    return build_norm(cfg, channels)


def rescale(channels, factor, norm):
    """Modules turning a map of stride ``s`` into stride ``s / factor`` (factor a power of two)."""
    steps = int(round(math.log2(factor)))
    if 2 ** steps != factor and abs(2.0 ** steps - factor) > 1e-6:
        raise ValueError(f'scale factor {factor} is not a power of two')
    layers = []
    if steps > 0:  # up-sample: (deconv, norm, GELU) ... deconv
        for i in range(steps):
            layers.append(nn.ConvTranspose2d(channels, channels, 2, stride=2))
            if i < steps - 1:
                layers += [make_norm(norm, channels), nn.GELU()]
    else:
        layers += [nn.MaxPool2d(2, 2) for _ in range(-steps)]
    return nn.Sequential(*layers)


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """Multi-scale maps from an isotropic backbone.

    Args:
        in_channels (int): channels of the backbone maps (its ``embed_dims``).
        out_channels (int): channels of every output map.
        patch_size (int): stride of the backbone maps.
        out_strides (sequence[int]): strides of the outputs (powers of two times ``patch_size`` or its
            divisors), default 4/8/16/32.
        norm (str | None): 'LN' (channel LayerNorm, ViTDet), 'GN', 'BN', 'SyncBN' or None.
        use_last_only (bool | None): True: every level from the last backbone map (ViTDet); False: backbone
            output ``i`` makes level ``i`` (needs one output per level); None: decided by the number of inputs.
    """

    def __init__(self, in_channels, out_channels=256, patch_size=16, out_strides=(4, 8, 16, 32), norm='LN',
                 use_last_only=None, init_cfg=None):
        if init_cfg is None:
            init_cfg = [dict(type='Kaiming', layer=['Conv2d', 'ConvTranspose2d'], a=1, mode='fan_in',
                             nonlinearity='leaky_relu'),
                        dict(type='Constant', layer=['GroupNorm', 'BatchNorm2d'], val=1.0, bias=0.0)]
        super().__init__(init_cfg=init_cfg)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.patch_size = patch_size
        self.out_strides = tuple(out_strides)
        self.use_last_only = use_last_only
        self.rescales = nn.ModuleList([rescale(in_channels, patch_size / s, norm) for s in self.out_strides])
        self.lateral = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=norm is None),
                          make_norm(norm, out_channels)) for _ in self.out_strides])
        self.output = nn.ModuleList([
            nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm is None),
                          make_norm(norm, out_channels)) for _ in self.out_strides])

    def forward(self, inputs):
        if not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        last_only = self.use_last_only if self.use_last_only is not None else len(inputs) == 1
        if not last_only and len(inputs) != len(self.out_strides):
            raise ValueError(f'per-depth taps need {len(self.out_strides)} backbone outputs, got {len(inputs)}')
        outs = []
        for i, (up, lat, out) in enumerate(zip(self.rescales, self.lateral, self.output)):
            x = inputs[-1] if last_only else inputs[i]
            outs.append(out(lat(up(x))))
        return tuple(outs)
