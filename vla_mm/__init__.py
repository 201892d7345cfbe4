"""vla_mm: vision models with linear-attention, state-space and RWKV-style token mixers on MMEngine.

Importing ``vla_mm`` applies the compatibility fixes the OpenMMLab stack needs on modern PyTorch
(:mod:`vla_mm.compat`) and registers every module into the ``vla_mm`` registry scope
(:mod:`vla_mm.registry`): configs say ``custom_imports=dict(imports=['vla_mm'])`` and ``type='vla_mm.<Name>'``.
"""
from .version import __version__
from . import compat  # noqa: E402  (must run before mmpretrain / mmdet are imported)

compat.apply_all()

from . import engine, models  # noqa: E402,F401

__all__ = ['__version__']
