"""Compatibility fixes for mmengine 0.10.7 / mmcv 2.1.0 / mmpretrain 1.2.0 / mmdet 3.3.0 on modern PyTorch.

Each fix is measured in ``../shared/ENVIRONMENT.md`` and documented in README.md ("Compatibility").
"""
from .checkpoint import CheckpointLoadError, allowed_checkpoint_globals, install_safe_checkpoint_loading
from .mmcv_ops import make_roi_align_stride_safe
from .multimodal import disable_mmpretrain_multimodal_if_broken

_applied = False


def apply_all():
    """Apply every fix once (idempotent)."""
    global _applied
    if _applied:
        return
    install_safe_checkpoint_loading()
    disable_mmpretrain_multimodal_if_broken()
    make_roi_align_stride_safe()
    _applied = True


__all__ = ['apply_all', 'CheckpointLoadError', 'allowed_checkpoint_globals',
           'install_safe_checkpoint_loading', 'disable_mmpretrain_multimodal_if_broken',
           'make_roi_align_stride_safe']
