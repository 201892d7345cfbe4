"""Building blocks shared by every backbone (one place, not per-model copies)."""
from .mlp import Mlp
from .patch_embed import ConvStem, PatchEmbed
from .pos_embed import build_2d_sincos_pos_embed, resize_abs_pos_embed

__all__ = ['Mlp', 'PatchEmbed', 'ConvStem', 'resize_abs_pos_embed', 'build_2d_sincos_pos_embed']
from .bitlinear import BitLinear  # noqa: F401,E402
