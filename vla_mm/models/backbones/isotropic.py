"""Isotropic (plain, single-resolution) backbone with a pluggable token mixer.

The layout of ViT / DeiT (Dosovitskiy et al., ICLR 2021; Touvron et al., ICML 2021): a stem to tokens, an absolute
position embedding, ``depth`` pre-norm residual blocks (:class:`~vla_mm.models.layers.MixerBlock`), a final norm.
The token mixer is a config choice (any :data:`vla_mm.registry.MIXERS` entry), the scan route too (any
:data:`vla_mm.registry.SCANS` entry, for directional mixers), and ``attn_layers`` turn chosen blocks into softmax
attention blocks (hybrids). Sizes follow DeiT: tiny / small / base are 192 / 384 / 768 wide, 12 blocks, 3 / 6 / 12
heads (DeiT's 5.7M / 22M / 86M parameters with a 1000-class head and the ``linear_attn`` mixer).

One class serves every task: classification (``out_type='avg_featmap'``, or ``'featmap'`` with mmpretrain's
``GlobalAveragePooling``), SimMIM pre-training (``forward(x, mask)``: a learned mask token replaces masked
patches), MAE pre-training (:class:`~vla_mm.models.backbones.isotropic_mae.IsotropicMAE`) and dense prediction
(``out_indices`` of several blocks as ``[B, C, h, w]`` maps, the position embedding interpolated to any input
size; :class:`vla_mm.models.necks.SimpleFeaturePyramid` makes strides 4..32 for UperNet / Mask R-CNN).

Data path of one forward: stem -> tokens ``[B, N, C]`` made contiguous once (by the position-embedding sum) ->
one :class:`~vla_mm.models.mixers.base.MixerContext` (grid, mask) -> block ``i`` gets ``ctx.at_layer(i, route_i)``
-> outputs of ``out_indices`` (the only other copy: a returned ``featmap`` is made NCHW-contiguous).
"""
import copy

import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import trunc_normal_

from ...registry import MODELS
from ..layers import MixerBlock, build_norm, build_stem, resize_abs_pos_embed, tokens_to_map
from ..mixers.base import MixerContext
from ..scans import build_scan
from .utils import FrozenStagesMixin, freeze, resolve_arch

__all__ = ['IsotropicBackbone', 'DEIT_ARCHS', 'OUT_TYPES']

#: DeiT's sizes by name (``arch='tiny'``) and their aliases
DEIT_ARCHS = {
    **dict.fromkeys(['t', 'tiny', 'deit-tiny'], dict(embed_dims=192, num_layers=12, num_heads=3)),
    **dict.fromkeys(['s', 'small', 'deit-small'], dict(embed_dims=384, num_layers=12, num_heads=6)),
    **dict.fromkeys(['b', 'base', 'deit-base'], dict(embed_dims=768, num_layers=12, num_heads=12)),
}
#: output formats by ``out_type``: (tokens ``[B, N, C]``, grid) -> output
OUT_TYPES = dict(featmap=tokens_to_map, avg_featmap=lambda x, hw: x.mean(dim=1), raw=lambda x, hw: x)


@MODELS.register_module()
class IsotropicBackbone(FrozenStagesMixin, BaseModule):
    """Isotropic vision backbone: stem, position embedding, blocks of a registry-built token mixer.

    Args:
        arch (str | dict): 'tiny' | 'small' | 'base' (DeiT sizes, :data:`DEIT_ARCHS`) or a dict with
            ``embed_dims``, ``num_layers``, ``num_heads`` (and optionally ``mlp_ratio``).
        mixer (dict): token mixer config, ``type`` a :data:`MIXERS` name (``num_heads`` from ``arch`` where the
            mixer takes heads and the config leaves them out).
        scan (str | dict | None): scan route of directional mixers (a :data:`SCANS` name or config; None or
            'uni': the plain row-major order). Built once per block (a learned merge belongs to its block).
        attn_layers (sequence[int]): blocks (negative counts from the end) whose mixer is ``attn_mixer``.
        attn_mixer (dict): mixer of the ``attn_layers`` blocks (default: softmax attention, ``'transformer'``).
        img_size (int | tuple): training input size; fixes the stored position-embedding grid.
        patch_size (int): stride of the stem.
        in_channels (int): image channels.
        stem (str | dict): 'patch' (one patchify conv, as ViT) or 'conv' (stride-2 3x3 convs, Xiao et al. 2021);
            a dict passes options, e.g. ``dict(type='conv', convs_per_stage=2)``.
        out_indices (int | sequence): blocks whose outputs are returned (negative counts from the end).
        out_type (str): 'featmap' ``[B, C, h, w]`` maps, 'avg_featmap' mean-pooled ``[B, C]``, 'raw' tokens
            ``[B, N, C]``.
        final_norm (bool): apply the final norm to the last block's output.
        norm_cfg (dict): norm of the blocks and the final norm: ``FusedLN`` (default: ``nn.LayerNorm``'s parameters,
            our fused op in eager CUDA runs; the faster eager step, docs/models.md), ``LN`` (torch's),
            ``FusedRMSNorm``, ``RMSNorm``.
        ffn_type (str): 'mlp' or 'glu' feed-forward.
        drop_path_rate (float): stochastic depth, linearly increasing over blocks.
        drop_rate (float): dropout in the feed-forward and after the position embedding.
        layer_scale_init_value (float): per-channel residual scale (CaiT); 0 turns it off.
        use_abs_pos_embed (bool): learned absolute position embedding.
        interpolate_mode (str): how the position embedding is resized to other grids.
        frozen_stages (int): freeze the stem and embeddings (>= 0) and the first ``frozen_stages`` blocks.
        norm_eval (bool): keep norm layers in eval mode while training (OpenMMLab interface).
        with_cp (bool): activation checkpointing of each block.
        init_cfg (dict | list | None): e.g. ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
    """

    arch_zoo = DEIT_ARCHS
    num_extra_tokens = 0

    def __init__(self, arch='tiny', mixer=dict(type='linear_attn'), scan=None, attn_layers=(),
                 attn_mixer=dict(type='transformer'), img_size=224, patch_size=16, in_channels=3, stem='patch',
                 out_indices=-1, out_type='featmap', final_norm=True, norm_cfg=dict(type='FusedLN', eps=1e-6),
                 ffn_type='mlp', drop_path_rate=0.0, drop_rate=0.0, layer_scale_init_value=0.0,
                 use_abs_pos_embed=True, interpolate_mode='bicubic', frozen_stages=-1, norm_eval=False,
                 with_cp=False, init_cfg=None):
        if init_cfg is None:  # ViT / DeiT initialisation; the embeddings are drawn below
            init_cfg = [dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.0),
                        dict(type='Constant', layer=['LayerNorm', 'RMSNorm'], val=1.0, bias=0.0)]
        super().__init__(init_cfg=init_cfg)
        arch = resolve_arch(arch, self.arch_zoo, ('embed_dims', 'num_layers', 'num_heads'))
        if out_type not in OUT_TYPES:
            raise ValueError(f'out_type must be one of {tuple(OUT_TYPES)}, got {out_type!r}')
        self.embed_dims = arch['embed_dims']
        self.num_layers = arch['num_layers']
        self.num_heads = arch['num_heads']
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = patch_size
        self.out_type = out_type
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.interpolate_mode = interpolate_mode

        self.patch_embed = build_stem(stem, in_channels, self.embed_dims, patch_size)
        self.patch_resolution = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, self.embed_dims)) if use_abs_pos_embed else None
        self.pos_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        # SimMIM's learned mask token (unused unless a mask is passed)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))
        trunc_normal_(self.mask_token, std=0.02)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)

        attn_layers = {self._index(i, 'attn_layers') for i in attn_layers}
        dpr = torch.linspace(0, drop_path_rate, self.num_layers).tolist()
        # mmengine's ModuleList: init_weights reaches the blocks' mixers (their own schedules run after init_cfg)
        self.layers = ModuleList([
            MixerBlock(self.embed_dims, copy.deepcopy(attn_mixer if i in attn_layers else mixer),
                       num_heads=self.num_heads, layer_idx=i, mlp_ratio=arch.get('mlp_ratio', 4.0),
                       ffn_type=ffn_type, norm_cfg=norm_cfg, drop_rate=drop_rate, drop_path_rate=dpr[i],
                       layer_scale_init_value=layer_scale_init_value, with_cp=with_cp, num_layers=self.num_layers)
            for i in range(self.num_layers)])
        self.attn_layers = sorted(attn_layers)
        # a gated merge weighs the core's output: value_dim wide where a mixer expands its values
        routes = [build_scan(scan, hw=self.patch_resolution,
                             channels=getattr(layer.mixer, 'value_dim', self.embed_dims)) for layer in self.layers]
        self.scans = nn.ModuleList(routes) if routes and routes[0] is not None else None
        self.final_norm = final_norm
        self.ln1 = build_norm(norm_cfg, self.embed_dims) if final_norm else nn.Identity()

        out_indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        self.out_indices = sorted({self._index(i, 'out_indices') for i in out_indices})
        self._register_load_state_dict_pre_hook(self._prepare_checkpoint)
        self._freeze_stages()

    def _index(self, i, what):
        if not -self.num_layers <= i < self.num_layers:
            raise IndexError(f'{what} entry {i} is out of range for {self.num_layers} layers')
        return i % self.num_layers

    # ------------------------------------------------------------------ checkpoints / freezing
    def _prepare_checkpoint(self, state_dict, prefix, *args, **kwargs):
        """Before loading: the stem's parameter names before it was mmcv's ``PatchEmbed`` (``proj`` ->
        ``projection``), and a position embedding of another grid resized to this model's (square grids)."""
        for key in [k for k in state_dict if k.startswith(prefix + 'patch_embed.proj.')]:
            state_dict[prefix + 'patch_embed.projection.' + key[len(prefix + 'patch_embed.proj.'):]] = \
                state_dict.pop(key)
        name = prefix + 'pos_embed'
        if self.pos_embed is None or name not in state_dict or state_dict[name].shape == self.pos_embed.shape:
            return
        ckpt = state_dict[name]
        n = ckpt.shape[1] - self.num_extra_tokens
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f'cannot resize a position embedding of {n} tokens (not a square grid)')
        MMLogger.get_current_instance().info(
            f'Resize the pos_embed shape from {tuple(ckpt.shape)} to {tuple(self.pos_embed.shape)}.')
        state_dict[name] = resize_abs_pos_embed(ckpt, (side, side), self.patch_resolution, self.num_extra_tokens,
                                                self.interpolate_mode)

    def get_layer_depth(self, param_name, prefix=''):
        """Layer-wise depth of a parameter for layer-wise lr decay (mmpretrain's
        ``LearningRateDecayOptimWrapperConstructor``): embeddings 0, block ``i`` is ``i + 1``, the rest (final
        norm, neck, head) ``num_layers + 1``; returns ``(depth, num_layers + 2)``."""
        num_layers = self.num_layers + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name in ('pos_embed', 'mask_token') or name.startswith('patch_embed'):
            return 0, num_layers
        if name.startswith(('layers.', 'scans.')):
            return int(name.split('.')[1]) + 1, num_layers
        return num_layers - 1, num_layers

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        # the stem (and a conv stem's BatchNorm, kept in eval mode), embeddings and the first blocks
        frozen = [self.patch_embed, self.mask_token] + list(self.layers[:self.frozen_stages])
        if self.scans is not None:
            frozen += list(self.scans[:self.frozen_stages])
        if self.pos_embed is not None:
            frozen.append(self.pos_embed)
        if self.frozen_stages >= self.num_layers and self.final_norm:
            frozen.append(self.ln1)
        freeze(frozen)

    # ------------------------------------------------------------------ forward
    def embed(self, x, mask=None):
        """Stem + position embedding -> contiguous tokens ``[B, N, C]`` and the grid; ``mask`` ``[B, h, w]``
        (1 = masked) swaps in the mask token (SimMIM)."""
        x, hw = self.patch_embed(x)  # a transposed view of the stem's NCHW output
        if mask is not None:
            w = mask.flatten(1).unsqueeze(-1).type_as(x)
            if w.shape[1] != x.shape[1]:
                raise ValueError(f'mask has {w.shape[1]} entries, the image has {x.shape[1]} patches {hw}')
            x = x * (1.0 - w) + self.mask_token * w
        # unused without a mask: a zero term gives the mask token a (zero) gradient, so DistributedDataParallel
        # needs no find_unused_parameters for classification and dense tasks
        zero = None
        if mask is None and self.training and self.mask_token.requires_grad and torch.is_grad_enabled():
            zero = 0.0 * self.mask_token.sum()
        if self.pos_embed is not None:
            pos = resize_abs_pos_embed(self.pos_embed, self.patch_resolution, hw, self.num_extra_tokens,
                                       self.interpolate_mode)
            # pos first: an elementwise result takes the layout of its first operand, so the sum comes out
            # [B, N, C]-contiguous and the blocks' norms never copy
            x = (pos if zero is None else pos + zero) + x
        elif zero is not None:
            x = x + zero
        x = x.contiguous()  # no copy after the sum above; the one copy of the tokens without it
        return self.pos_drop(x), hw

    def _layer_ctx(self, ctx, i):
        return ctx.at_layer(i) if self.scans is None else ctx.at_layer(i, route=self.scans[i])

    def forward_tokens(self, x, ctx, out_indices=None):
        """Run the blocks (and the final norm) over tokens ``x [B, N, C]``; returns the tokens after each block of
        ``out_indices`` (default: the backbone's)."""
        out_indices = self.out_indices if out_indices is None else out_indices
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, self._layer_ctx(ctx, i))
            if i == self.num_layers - 1:
                x = self.ln1(x)
            if i in out_indices:
                outs.append(x)
        return outs

    def forward(self, x, mask=None):
        x, hw = self.embed(x, mask)
        ctx = MixerContext(hw=hw, mask=None if mask is None else mask.flatten(1).bool())
        return tuple(OUT_TYPES[self.out_type](tokens, hw) for tokens in self.forward_tokens(x, ctx))
