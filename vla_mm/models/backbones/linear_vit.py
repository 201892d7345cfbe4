"""``LinearViT`` and ``LinearViTMAE``: the names of the isotropic backbone before the mixer became a config choice.

They are :class:`~vla_mm.models.backbones.isotropic.IsotropicBackbone` and
:class:`~vla_mm.models.backbones.isotropic_mae.IsotropicMAE` with the ``linear_attn`` mixer by default, kept so
that configs and checkpoints written for them load unchanged (parameter names of the old block are converted on
load: see ``MixerBlock`` and ``IsotropicBackbone._prepare_checkpoint``).
"""
from ...registry import MODELS
from .isotropic import IsotropicBackbone
from .isotropic_mae import IsotropicMAE

__all__ = ['LinearViT', 'LinearViTMAE']


def _old_kwargs(kwargs):
    if 'layer_scale_init' in kwargs:  # the old argument name
        kwargs['layer_scale_init_value'] = kwargs.pop('layer_scale_init') or 0.0
    return kwargs


@MODELS.register_module()
class LinearViT(IsotropicBackbone):
    """:class:`IsotropicBackbone` under its old name (non-causal linear attention by default)."""

    def __init__(self, mixer=None, **kwargs):
        super().__init__(mixer=mixer or dict(type='linear_attn'), **_old_kwargs(kwargs))


@MODELS.register_module()
class LinearViTMAE(IsotropicMAE):
    """:class:`IsotropicMAE` under its old name (non-causal linear attention by default)."""

    def __init__(self, mixer=None, **kwargs):
        super().__init__(mixer=mixer or dict(type='linear_attn'), **_old_kwargs(kwargs))
