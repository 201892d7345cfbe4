"""Four-stage (pyramid) backbone base with a pluggable token mixer per stage.

The layout of the pyramid vision backbones (PVT, Wang et al. ICCV 2021; Swin, Liu et al. ICCV 2021; VMamba, Liu
et al. 2024): a stem to stride ``patch_size`` (4), then four stages of :class:`~vla_mm.models.layers.MixerBlock`
with a stride-2 downsampling between stages (mmcv's ``PatchEmbed`` as an overlapping 3x3 / stride-2 conv with a
norm, PVTv2's "overlapping patch embedding"), so the stages run at strides 4 / 8 / 16 / 32 with their own
widths, depths, heads and mixers. ``out_indices`` name stages; each returned stage output passes its own norm
and comes out as an NCHW map ``[B, C_i, H / s_i, W / s_i]``, what mmseg's ``UPerHead`` and mmdet's ``FPN`` take.

Published pyramids build on this class in a file of their own (their stems, downsampling and per-stage options
as arguments). Tokens stay ``[B, N, C]``-contiguous: the downsampling conv reads the tokens as a channels-last
map view and returns channels-last, whose tokens view is contiguous again (no copies between stages).
"""
import copy

import torch
import torch.nn as nn
from mmcv.cnn.bricks.transformer import PatchEmbed
from mmengine.model import BaseModule, ModuleList

from ...registry import MODELS
from ..layers import MixerBlock, build_norm, build_stem, map_view, resolve_norm_cfg, tokens_to_map
from ..mixers.base import MixerContext
from ..scans import build_scan
from .utils import FrozenStagesMixin, freeze, resolve_arch

__all__ = ['HierarchicalBackbone', 'PYRAMID_ARCHS']

#: example sizes; published families define their own
PYRAMID_ARCHS = {
    **dict.fromkeys(['n', 'nano'], dict(embed_dims=(32, 64, 128, 256), depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))),
    **dict.fromkeys(['t', 'tiny'], dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 6, 2), num_heads=(2, 4, 8, 16))),
}


def _per_stage(value, name, num_stages=4):
    """A per-stage setting: one value for every stage, or a list / tuple of one per stage."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f'{name} needs {num_stages} entries (one per stage), got {len(value)}')
        return list(value)
    return [value] * num_stages


@MODELS.register_module()
class HierarchicalBackbone(FrozenStagesMixin, BaseModule):
    """Four-stage vision backbone: stem, per-stage blocks of registry-built mixers, stride-2 downsampling.

    Args:
        arch (str | dict): a name of :data:`PYRAMID_ARCHS` or a dict with ``embed_dims``, ``depths``,
            ``num_heads`` (four entries each; optionally ``mlp_ratios``).
        mixer (dict | list[dict]): token mixer config, or one per stage.
        scan (str | dict | None): scan route of directional mixers (built once per block).
        attn_layers (sequence[int]): blocks, counted over all stages, whose mixer is ``attn_mixer``.
        attn_mixer (dict): mixer of the ``attn_layers`` blocks (default softmax attention, ``'transformer'``).
        img_size (int | tuple): training input size (fixes the grids a stored route, e.g. ``random``, is made for).
        in_channels (int): image channels.
        stem (str | dict): 'patch' or 'conv' (see :data:`vla_mm.models.layers.STEMS`), followed by a norm.
        patch_size (int): stride of the stem (stage 0).
        mlp_ratio (float | list): feed-forward width per stage (``arch['mlp_ratios']`` wins).
        ffn_type (str): 'mlp' or 'glu'.
        norm_cfg (dict): norm of the blocks, the stem, the downsampling and the outputs.
        downsample (dict): options of the stride-2 ``PatchEmbed`` between stages (kernel, stride, padding).
        out_indices (sequence[int]): stages whose outputs are returned.
        drop_path_rate (float): stochastic depth, linearly increasing over all blocks.
        drop_rate (float): dropout inside the feed-forward.
        layer_scale_init_value (float): per-channel residual scale; 0 turns it off.
        frozen_stages (int): freeze the stem (>= 0) and the first ``frozen_stages`` stages.
        norm_eval (bool): keep norm layers in eval mode while training.
        with_cp (bool): activation checkpointing of each block.
        init_cfg (dict | list | None): initialisation or ``Pretrained`` checkpoint.
    """

    arch_zoo = PYRAMID_ARCHS
    num_stages = 4

    def __init__(self, arch='tiny', mixer=dict(type='linear_attn'), scan=None, attn_layers=(),
                 attn_mixer=dict(type='transformer'), img_size=224, in_channels=3, stem='patch', patch_size=4,
                 mlp_ratio=4.0, ffn_type='mlp', norm_cfg=dict(type='LN', eps=1e-6),
                 downsample=dict(kernel_size=3, stride=2, padding=1), out_indices=(0, 1, 2, 3), drop_path_rate=0.0,
                 drop_rate=0.0, layer_scale_init_value=0.0, frozen_stages=-1, norm_eval=False, with_cp=False,
                 init_cfg=None):
        if init_cfg is None:
            init_cfg = [dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.0),
                        dict(type='Constant', layer=['LayerNorm', 'RMSNorm'], val=1.0, bias=0.0)]
        super().__init__(init_cfg=init_cfg)
        arch = resolve_arch(arch, self.arch_zoo, ('embed_dims', 'depths', 'num_heads'))
        dims = _per_stage(arch['embed_dims'], 'embed_dims')
        depths = _per_stage(arch['depths'], 'depths')
        heads = _per_stage(arch['num_heads'], 'num_heads')
        mlp_ratios = _per_stage(arch.get('mlp_ratios', mlp_ratio), 'mlp_ratios')
        mixers = _per_stage(mixer, 'mixer')
        self.embed_dims, self.depths, self.num_layers = dims, depths, sum(depths)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        out_indices = [out_indices] if isinstance(out_indices, int) else out_indices
        self.out_indices = sorted({i % self.num_stages for i in out_indices})

        self.patch_embed = build_stem(stem, in_channels, dims[0], patch_size, norm_cfg=norm_cfg)
        self.downsamples = nn.ModuleList([
            PatchEmbed(dims[i], dims[i + 1], norm_cfg=resolve_norm_cfg(norm_cfg), **downsample) for i in range(self.num_stages - 1)])
        attn_layers = {i % self.num_layers for i in attn_layers}
        dpr = torch.linspace(0, drop_path_rate, self.num_layers).tolist()
        # mmengine's ModuleList: init_weights reaches the blocks' mixers (their own schedules run after init_cfg)
        self.stages, routes, k = ModuleList(), [], 0
        for i in range(self.num_stages):
            blocks = ModuleList()
            grid = tuple(-(-s // (patch_size * 2 ** i)) for s in self.img_size)
            for _ in range(depths[i]):
                blocks.append(MixerBlock(dims[i], copy.deepcopy(attn_mixer if k in attn_layers else mixers[i]),
                                         num_heads=heads[i], layer_idx=k, mlp_ratio=mlp_ratios[i], ffn_type=ffn_type,
                                         norm_cfg=norm_cfg, drop_rate=drop_rate, drop_path_rate=dpr[k],
                                         layer_scale_init_value=layer_scale_init_value, with_cp=with_cp,
                                         num_layers=self.num_layers))
                routes.append(build_scan(scan, hw=grid, channels=getattr(blocks[-1].mixer, 'value_dim', dims[i])))
                k += 1
            self.stages.append(blocks)
        self.attn_layers = sorted(attn_layers)
        self.scans = nn.ModuleList(routes) if routes[0] is not None else None
        self.out_norms = nn.ModuleList([build_norm(norm_cfg, dims[i]) if i in self.out_indices else nn.Identity()
                                        for i in range(self.num_stages)])
        self._freeze_stages()

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed]
        for i in range(min(self.frozen_stages, self.num_stages)):
            frozen += [self.stages[i], self.out_norms[i]] + ([self.downsamples[i - 1]] if i else [])
            if self.scans is not None:
                first = sum(self.depths[:i])
                frozen += list(self.scans[first:first + self.depths[i]])
        freeze(frozen)

    def forward(self, x):
        x, hw = self.patch_embed(x)
        outs, k = [], 0
        for i, blocks in enumerate(self.stages):
            if i:
                x, hw = self.downsamples[i - 1](map_view(x, hw))
            ctx = MixerContext(hw=hw)
            for block in blocks:
                x = block(x, ctx.at_layer(k) if self.scans is None else ctx.at_layer(k, route=self.scans[k]))
                k += 1
            if i in self.out_indices:
                outs.append(tokens_to_map(self.out_norms[i](x), hw))
        return tuple(outs)
