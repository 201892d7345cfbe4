"""The isotropic backbone for MAE pre-training (He et al., "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022).

The encoder sees only the visible patches: a random ``mask_ratio`` of the tokens is dropped before the blocks,
so the token count N changes; the blocks' :class:`~vla_mm.models.mixers.base.MixerContext` carries the grid
positions of the kept tokens (``ids_keep``), so scan routes visit them in grid order and mixers that need the full
grid (the ``linear_attn`` LePE branch) refuse. The output follows mmpretrain's ``MAEViT`` so that its ``MAE``,
``MAEPretrainDecoder`` and ``MAEPretrainHead`` are used unchanged: ``(latent [B, 1 + N_keep, C], mask [B, L],
ids_restore [B, L])``. There is no class token; the first token of ``latent`` is the mean of the encoded visible
tokens, which fills the decoder's class-token slot.

The position embedding starts as the fixed 2D sine-cosine table and is frozen (as ``MAEViT``); a checkpoint
loads into a plain :class:`IsotropicBackbone` for fine-tuning (``mask_token`` unused, ``pos_embed`` learnable).
"""
import torch

from ...registry import MODELS
from ..layers import build_2d_sincos_pos_embed
from ..mixers.base import MixerContext
from .isotropic import IsotropicBackbone

__all__ = ['IsotropicMAE', 'random_masking']


def random_masking(x, mask_ratio):
    """Keep a random ``1 - mask_ratio`` of the tokens of each image (MAE's per-sample shuffle).

    Returns ``(kept tokens [B, N_keep, C], mask [B, L] (1 = dropped), ids_restore [B, L], ids_keep [B, N_keep])``.
    The same draw as mmpretrain's ``MAEViT.random_masking``, which does not return ``ids_keep`` (the mixers'
    context needs it) and keeps no token when ``mask_ratio`` leaves less than one (here at least one is kept).
    """
    B, L, C = x.shape
    keep = max(1, int(L * (1 - mask_ratio)))
    noise = torch.rand(B, L, device=x.device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, C))
    mask = torch.ones(B, L, device=x.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x, mask, ids_restore, ids_keep


@MODELS.register_module()
class IsotropicMAE(IsotropicBackbone):
    """:class:`IsotropicBackbone` with MAE's random token dropping.

    Args:
        mask_ratio (float): fraction of patches dropped per image.
        **kwargs: the arguments of :class:`IsotropicBackbone` (``out_type`` applies to the unmasked forward only).
    """

    def __init__(self, mask_ratio=0.75, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f'mask_ratio must be in [0, 1), got {mask_ratio}')
        self.mask_ratio = mask_ratio
        if self.pos_embed is not None:
            self.pos_embed.requires_grad = False

    def init_weights(self):
        super().init_weights()
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            return
        if self.pos_embed is not None:
            self.pos_embed.data.copy_(build_2d_sincos_pos_embed(self.patch_resolution, self.embed_dims))
        proj = self.patch_embed.projection
        if isinstance(proj, torch.nn.Conv2d):
            w = proj.weight.data
            torch.nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    def forward(self, x, mask=True):
        if mask is None or mask is False:
            return super().forward(x)
        x, hw = self.embed(x)
        x, mask, ids_restore, ids_keep = random_masking(x, self.mask_ratio)
        (x, ) = self.forward_tokens(x, MixerContext(hw=hw, ids_keep=ids_keep), out_indices=(self.num_layers - 1, ))
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1), mask, ids_restore
