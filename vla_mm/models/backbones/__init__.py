"""Backbones: a tuple of ``[B, C, h, w]`` maps for ``out_indices``. The bases (``isotropic.py``,
``hierarchical.py``) compose blocks, mixers and scan routes by registry name; a published model family is one
file that builds on them."""
from .hierarchical import HierarchicalBackbone  # noqa: F401
from .isotropic import IsotropicBackbone  # noqa: F401
from .isotropic_mae import IsotropicMAE  # noqa: F401
from .linear_vit import LinearViT, LinearViTMAE  # noqa: F401
