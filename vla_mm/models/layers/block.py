"""The residual block every backbone stacks: ``x + drop_path(gamma1 * mixer(norm1(x), ctx))`` then
``x + drop_path(gamma2 * ffn(norm2(x)))`` (pre-norm, as ViT / DeiT).

The mixer is any :data:`vla_mm.registry.MIXERS` entry built by :func:`~vla_mm.models.mixers.base.build_mixer`;
the norm is LayerNorm or RMSNorm (:func:`~vla_mm.models.layers.norm.build_norm`); the feed-forward half is mmcv's
``FFN`` or mmpretrain's ``SwiGLUFFN`` (:func:`~vla_mm.models.layers.ffn.build_ffn`), which hold the second
residual, layer scale and drop path themselves; layer scale is mmcv's ``LayerScale`` (CaiT), drop path mmcv's
``DropPath``. Tokens stay ``[B, N, C]``-contiguous through the block: every op returns a fresh contiguous
tensor, so LayerNorm reads and writes without copies in either direction.
"""
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmcv.cnn.bricks.scale import LayerScale
from mmengine.model import BaseModule

from ..mixers.base import build_mixer
from .ffn import build_ffn
from .norm import build_norm

__all__ = ['MixerBlock']

# parameter names of the block before it used mmcv's FFN and LayerScale (checkpoints of LinearViT up to f9fe1d7)
_RENAMED_PREFIXES = (('mlp.fc1.', 'ffn.layers.0.0.'), ('mlp.fc2.', 'ffn.layers.1.'))
_RENAMED_KEYS = (('gamma1', 'gamma1.weight'), ('gamma2', 'ffn.gamma2.weight'))


def _rename_old_keys(state_dict, prefix, *args):
    for old, new in _RENAMED_KEYS:
        if prefix + old in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
    for key in [k for k in state_dict if k.startswith(prefix + 'mlp.fc')]:
        rest = key[len(prefix):]
        for old, new in _RENAMED_PREFIXES:
            if rest.startswith(old):
                state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)


class MixerBlock(BaseModule):
    """Pre-norm residual block around a token mixer; ``forward(x [B, N, C], ctx) -> [B, N, C]``.

    Args:
        dim (int): channels C.
        mixer (dict): mixer config (``type`` a :data:`MIXERS` name); ``dim``, ``num_heads`` and ``layer_idx``
            are filled in where the mixer takes them and the config leaves them out.
        num_heads (int, optional): default head count for the mixer.
        layer_idx (int): the block's index in its backbone.
        num_layers (int, optional): the backbone's depth, for mixers whose initialisation follows the depth.
        mlp_ratio (float): hidden width of the feed-forward half, in units of ``dim``.
        ffn_type (str): 'mlp' (Linear-act-Linear) or 'glu' (SwiGLU).
        act_cfg (dict): activation of the 'mlp' feed-forward.
        norm_cfg (dict): ``dict(type='LN', eps=1e-6)`` (torch's LayerNorm; ``'FusedLN'``: ours), ``'FusedRMSNorm'``,
            ``'RMSNorm'`` (any registered norm).
        drop_rate (float): dropout inside the 'mlp' feed-forward.
        drop_path_rate (float): stochastic depth of both residual branches.
        layer_scale_init_value (float): per-channel residual scale (CaiT) starting at this value; 0 turns it off.
        with_cp (bool): activation checkpointing (recompute the block in the backward while training).
    """

    def __init__(self, dim, mixer, num_heads=None, layer_idx=0, mlp_ratio=4.0, ffn_type='mlp',
                 act_cfg=dict(type='GELU'), norm_cfg=dict(type='LN', eps=1e-6), drop_rate=0.0,
                 drop_path_rate=0.0, layer_scale_init_value=0.0, with_cp=False, num_layers=None, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.with_cp = with_cp
        self.norm1 = build_norm(norm_cfg, dim)
        self.mixer = build_mixer(mixer, dim=dim, num_heads=num_heads, layer_idx=layer_idx, num_layers=num_layers)
        self.gamma1 = LayerScale(dim, scale=layer_scale_init_value) if layer_scale_init_value else nn.Identity()
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm2 = build_norm(norm_cfg, dim)
        self.ffn = build_ffn(ffn_type, dim, int(dim * mlp_ratio), act_cfg=act_cfg, drop_rate=drop_rate,
                             drop_path_rate=drop_path_rate, layer_scale_init_value=layer_scale_init_value)
        self._register_load_state_dict_pre_hook(_rename_old_keys)

    def _forward(self, x, ctx):
        branch = self.drop_path(self.gamma1(self.mixer(self.norm1(x), ctx)))
        if hasattr(self.norm2, 'add_forward'):  # the fused norms: the residual add inside the norm's pass
            y, x = self.norm2.add_forward(branch, x)
        else:
            x = x + branch
            y = self.norm2(x)
        return self.ffn(y, identity=x)

    def forward(self, x, ctx):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, ctx, use_reentrant=False)
        return self._forward(x, ctx)
