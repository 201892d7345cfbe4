"""Token mixers: ``forward(x [B, N, C], ctx) -> [B, N, C]`` (the contract: base.py), registered in
``vla_mm.registry.MIXERS`` by short name; one file per mixer, one import line each."""
from .base import BaseMixer, MixerContext, build_mixer, linear_factory  # noqa: F401
from .linear_attn import LinearAttention  # noqa: F401
from .gla import GatedLinearAttention  # noqa: F401
from .retnet import MultiScaleRetention  # noqa: F401
from .hgrn import HGRNMixer  # noqa: F401
from .deltanet import DeltaNet  # noqa: F401
from .gated_deltanet import GatedDeltaNet  # noqa: F401
from .gsa import GatedSlotAttention  # noqa: F401
from .abc import ABCAttention  # noqa: F401
from .transformer import SoftmaxAttention  # noqa: F401
from .bitnet import BitAttention  # noqa: F401
from .hgrn2 import HGRN2Mixer  # noqa: F401
from .lightnet import LightNetMixer  # noqa: F401
from .rwkv6 import RWKV6Mixer  # noqa: F401
