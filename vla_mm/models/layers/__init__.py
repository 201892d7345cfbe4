"""Building blocks shared by every backbone (one place, not per-model copies): the residual block, stems,
norms, feed-forward layers, position embeddings."""
from .bitlinear import BitLinear  # noqa: F401
from .block import MixerBlock  # noqa: F401
from .ffn import FFN_TYPES, build_ffn  # noqa: F401
from .linear import BiasGradLinear, use_bias_grad_op  # noqa: F401
from .norm import FusedLayerNorm, FusedRMSNorm, LayerNorm2d, build_norm, resolve_norm_cfg  # noqa: F401
from .patch_embed import STEMS, ConvStem, PatchEmbed, build_stem  # noqa: F401
from .pos_embed import build_2d_sincos_pos_embed, resize_abs_pos_embed  # noqa: F401
from .tokens import map_view, tokens_to_map  # noqa: F401
