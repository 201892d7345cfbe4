"""Isotropic ViT-style backbone with a pluggable token mixer.

Layout of DeiT (Touvron et al., "Training data-efficient image transformers", ICML 2021): patch embedding,
absolute position embedding, ``depth`` blocks of ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``, a final norm.
The attention of DeiT is replaced by any token mixer of :data:`vla_mm.registry.MIXERS` (default: non-causal
linear attention), so the sizes match DeiT's: tiny 5.7M, small 22M, base 86M parameters (with a 1000-class
head; the backbone alone is 0.2M / 0.4M / 0.8M smaller).

One class serves every task: classification (mean-pooled features through mmpretrain's
``GlobalAveragePooling``), SimMIM pretraining (``mask`` argument: a learned mask token replaces masked patches),
and dense prediction (``out_indices`` of several blocks, position embedding interpolated to any input size; a
neck such as :class:`vla_mm.models.necks.SimpleFeaturePyramid` makes strides 4/8/16/32).
"""
import copy

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_

from ...registry import MIXERS, MODELS
from ..layers import ConvStem, Mlp, PatchEmbed, resize_abs_pos_embed


def build_mixer(cfg):
    """Build a token mixer by its registered name, whatever the caller's default scope (mmpretrain, mmseg...)."""
    cfg = dict(cfg)
    name = cfg.pop('type')
    cls = MIXERS.get(name)
    if cls is None:
        raise KeyError(f'{name} is not in the vla_mm::token mixer registry. Registered: {sorted(MIXERS.module_dict)}')
    return cls(**cfg)


class MixerBlock(nn.Module):
    """``x + drop_path(mixer(norm1(x), hw))`` then ``x + drop_path(mlp(norm2(x)))``."""

    def __init__(self, dim, mixer_cfg, mlp_ratio=4.0, drop_path=0.0, drop=0.0, layer_scale_init=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mixer = build_mixer(dict(mixer_cfg, dim=dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if layer_scale_init:
            self.gamma1 = nn.Parameter(layer_scale_init * torch.ones(dim))
            self.gamma2 = nn.Parameter(layer_scale_init * torch.ones(dim))
        else:
            self.gamma1 = self.gamma2 = None

    def forward(self, x, hw):
        y = self.mixer(self.norm1(x), hw)
        x = x + self.drop_path(y if self.gamma1 is None else self.gamma1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma2 is None else self.gamma2 * y)


@MODELS.register_module()
class LinearViT(BaseModule):
    """Isotropic vision backbone with a registry-built token mixer.

    Args:
        arch (str | dict): 'tiny' | 'small' | 'base' (DeiT sizes) or a dict with ``embed_dims``,
            ``num_layers``, ``num_heads`` (and optionally ``mlp_ratio``).
        img_size (int | tuple): training input size; fixes the stored position-embedding grid.
        patch_size (int): patch side.
        stem (str | dict): 'patch' (one patchify conv, as ViT/DeiT) or 'conv' (stride-2 3x3 convs, Xiao et al.
            2021); a dict passes options, e.g. ``dict(type='conv', convs_per_stage=2)``.
        in_channels (int): image channels.
        mixer (dict): token mixer config, ``type`` a :data:`MIXERS` name (``num_heads`` filled from ``arch``).
        out_indices (int | sequence): blocks whose outputs are returned (negative counts from the end).
        out_type (str): 'featmap' returns ``[B, C, h, w]`` maps; 'avg_featmap' returns mean-pooled ``[B, C]``.
        final_norm (bool): apply the last LayerNorm to the last block's output.
        drop_path_rate (float): stochastic depth, linearly increasing over blocks.
        drop_rate (float): dropout in the MLPs and after the position embedding.
        layer_scale_init (float | None): per-channel residual scaling (CaiT), off by default.
        use_abs_pos_embed (bool): learned absolute position embedding.
        frozen_stages (int): freeze the patch embedding (>= 0) and the first ``frozen_stages`` blocks.
        norm_eval (bool): keep norm layers in eval mode while training (LayerNorm has no running stats; kept
            for the OpenMMLab interface).
        with_cp (bool): activation checkpointing of each block.
        init_cfg (dict | list | None): e.g. ``dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
    """

    arch_zoo = {
        **dict.fromkeys(['t', 'tiny', 'deit-tiny'], dict(embed_dims=192, num_layers=12, num_heads=3)),
        **dict.fromkeys(['s', 'small', 'deit-small'], dict(embed_dims=384, num_layers=12, num_heads=6)),
        **dict.fromkeys(['b', 'base', 'deit-base'], dict(embed_dims=768, num_layers=12, num_heads=12)),
    }
    num_extra_tokens = 0

    def __init__(self, arch='tiny', img_size=224, patch_size=16, in_channels=3, stem='patch', mixer=None,
                 out_indices=-1,
                 out_type='featmap', final_norm=True, drop_path_rate=0.0, drop_rate=0.0, layer_scale_init=None,
                 use_abs_pos_embed=True, frozen_stages=-1, norm_eval=False, with_cp=False, init_cfg=None):
        if init_cfg is None:  # ViT/DeiT initialisation; embeddings are drawn below
            init_cfg = [dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.0),
                        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)]
        super().__init__(init_cfg=init_cfg)
        if isinstance(arch, str):
            if arch.lower() not in self.arch_zoo:
                raise KeyError(f'arch {arch!r} is not one of {sorted(set(self.arch_zoo))}')
            arch = self.arch_zoo[arch.lower()]
        missing = {'embed_dims', 'num_layers', 'num_heads'} - set(arch)
        if missing:
            raise KeyError(f'custom arch is missing {sorted(missing)}')
        if out_type not in ('featmap', 'avg_featmap'):
            raise ValueError(f"out_type must be 'featmap' or 'avg_featmap', got {out_type!r}")
        self.embed_dims = arch['embed_dims']
        self.num_layers = arch['num_layers']
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = patch_size
        self.out_type = out_type
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        stems = dict(patch=PatchEmbed, conv=ConvStem)
        stem = dict(type=stem) if isinstance(stem, str) else dict(stem)
        stem_type = stem.pop('type', 'patch')
        if stem_type not in stems:
            raise KeyError(f'stem {stem_type!r} is not one of {sorted(stems)}')
        self.patch_embed = stems[stem_type](in_channels, self.embed_dims, patch_size, **stem)
        self.patch_resolution = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, self.embed_dims)) if use_abs_pos_embed else None
        self.pos_drop = nn.Dropout(drop_rate)
        # SimMIM's learned mask token (unused unless a mask is passed)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims))
        trunc_normal_(self.mask_token, std=0.02)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)

        mixer = copy.deepcopy(mixer) if mixer is not None else dict(type='linear_attn')
        mixer.setdefault('num_heads', arch['num_heads'])
        dpr = torch.linspace(0, drop_path_rate, self.num_layers).tolist()
        self.layers = nn.ModuleList([
            MixerBlock(self.embed_dims, mixer, arch.get('mlp_ratio', 4.0), dpr[i], drop_rate, layer_scale_init)
            for i in range(self.num_layers)])
        self.final_norm = final_norm
        self.ln1 = nn.LayerNorm(self.embed_dims, eps=1e-6) if final_norm else nn.Identity()

        out_indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        self.out_indices = sorted(i % self.num_layers for i in out_indices)
        for i in out_indices:
            if not -self.num_layers <= i < self.num_layers:
                raise IndexError(f'out_indices entry {i} is out of range for {self.num_layers} layers')
        self._register_load_state_dict_pre_hook(self._prepare_pos_embed)
        self._freeze_stages()

    # ------------------------------------------------------------------ checkpoints / freezing
    def _prepare_pos_embed(self, state_dict, prefix, *args, **kwargs):
        """Resize a checkpoint's position embedding to this model's grid (checkpoints from other sizes)."""
        name = prefix + 'pos_embed'
        if self.pos_embed is None or name not in state_dict:
            return
        ckpt = state_dict[name]
        if ckpt.shape == self.pos_embed.shape:
            return
        n = ckpt.shape[1] - self.num_extra_tokens
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f'cannot resize a position embedding of {n} tokens (not a square grid)')
        from mmengine.logging import MMLogger
        MMLogger.get_current_instance().info(
            f'Resize the pos_embed shape from {tuple(ckpt.shape)} to {tuple(self.pos_embed.shape)}.')
        state_dict[name] = resize_abs_pos_embed(ckpt, (side, side), self.patch_resolution, self.num_extra_tokens)

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
        if name.startswith('layers.'):
            return int(name.split('.')[1]) + 1, num_layers
        return num_layers - 1, num_layers

    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        # the stem (and a conv stem's BatchNorm, kept in eval mode), embeddings and the first blocks
        frozen = [self.patch_embed, self.mask_token] + list(self.layers[:self.frozen_stages])
        if self.pos_embed is not None:
            frozen.append(self.pos_embed)
        for m in frozen:
            if isinstance(m, nn.Parameter):
                m.requires_grad = False
            else:
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False
        if self.frozen_stages >= self.num_layers and self.final_norm:
            self.ln1.eval()
            for p in self.ln1.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                    m.eval()
        return self

    # ------------------------------------------------------------------ forward
    def embed(self, x, mask=None):
        """Patch + position embedding; ``mask`` [B, h, w] (1 = masked) swaps in the mask token (SimMIM)."""
        x, hw = self.patch_embed(x)
        if mask is not None:
            B, N, _ = x.shape
            w = mask.flatten(1).unsqueeze(-1).type_as(x)
            if w.shape[1] != N:
                raise ValueError(f'mask has {w.shape[1]} entries, the image has {N} patches {hw}')
            x = x * (1.0 - w) + self.mask_token.expand(B, N, -1) * w
        elif self.training and self.mask_token.requires_grad and torch.is_grad_enabled():
            # unused without a mask: a zero term gives it a (zero) gradient, so DistributedDataParallel needs
            # no find_unused_parameters for classification and dense tasks
            x = x + 0.0 * self.mask_token.sum()
        if self.pos_embed is not None:
            pos = resize_abs_pos_embed(self.pos_embed, self.patch_resolution, hw, self.num_extra_tokens)
            x = x + pos
        return self.pos_drop(x), hw

    def forward_blocks(self, x, hw):
        """Run the blocks over tokens ``x`` [B, N, C]; yields (index, tokens) for each out index."""
        outs = []
        for i, layer in enumerate(self.layers):
            if self.with_cp and x.requires_grad:
                x = cp.checkpoint(layer, x, hw, use_reentrant=False)
            else:
                x = layer(x, hw)
            if i == self.num_layers - 1:
                x = self.ln1(x)
            if i in self.out_indices:
                outs.append(x)
        return outs

    def forward(self, x, mask=None):
        x, hw = self.embed(x, mask)
        outs = []
        for tokens in self.forward_blocks(x, hw):
            if self.out_type == 'avg_featmap':
                outs.append(tokens.mean(dim=1))
            else:
                B, _, C = tokens.shape
                outs.append(tokens.transpose(1, 2).reshape(B, C, hw[0], hw[1]).contiguous())
        return tuple(outs)
