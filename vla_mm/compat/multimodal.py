"""mmpretrain 1.2.0 with transformers 5.x installed.

mmpretrain imports its BLIP/multimodal models whenever ``transformers`` imports; with transformers 5.x their
base classes resolve to ``None`` and ``import mmpretrain.models`` fails with ``TypeError: NoneType takes no
arguments`` (also reached through ``mmdet.utils.register_all_modules()``). The fix marks multimodal as
unavailable (``mmpretrain.utils.dependency.WITH_MULTIMODAL = False``) before ``mmpretrain.models`` is imported.
vla_mm uses none of mmpretrain's multimodal models.
"""
import sys
from importlib import metadata


def _transformers_major():
    try:
        return int(metadata.version('transformers').split('.')[0])
    except (metadata.PackageNotFoundError, ValueError):
        return None


def disable_mmpretrain_multimodal_if_broken(force=False):
    """Returns True if the fix was applied."""
    major = _transformers_major()
    if not force and (major is None or major < 5):
        return False
    if 'mmpretrain.models' in sys.modules:
        # too late to switch it off; this only happens if mmpretrain.models was imported before vla_mm
        return False
    try:
        from mmpretrain.utils import dependency
    except ImportError:
        return False
    dependency.WITH_MULTIMODAL = False
    return True
