"""Token mixers: ``forward(x [B, N, C], hw) -> [B, N, C]``, registered in ``vla_mm.registry.MIXERS`` by short name."""
from .linear_attn import LinearAttention

__all__ = ['LinearAttention']
from .gla import GatedLinearAttention  # noqa: E402,F401
from .retnet import MultiScaleRetention  # noqa: E402,F401
from .hgrn import HGRNMixer  # noqa: E402,F401
from .deltanet import DeltaNet  # noqa: E402,F401
from .gated_deltanet import GatedDeltaNet  # noqa: E402,F401
from .gsa import GatedSlotAttention  # noqa: E402,F401
from .abc import ABCAttention  # noqa: E402,F401
from .transformer import SoftmaxAttention  # noqa: E402,F401
from .bitnet import BitAttention  # noqa: E402,F401
from .hgrn2 import HGRN2Mixer  # noqa: E402,F401
from .lightnet import LightNetMixer  # noqa: E402,F401
from .rwkv6 import RWKV6Mixer  # noqa: E402,F401
