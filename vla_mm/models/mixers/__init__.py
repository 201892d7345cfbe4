"""Token mixers: ``forward(x [B, N, C], hw) -> [B, N, C]``, registered in ``vla_mm.registry.MIXERS`` by short name."""
from .linear_attn import LinearAttention

__all__ = ['LinearAttention']
from .gla import GatedLinearAttention  # noqa: E402,F401
from .retnet import MultiScaleRetention  # noqa: E402,F401
