"""mmcv 2.1.0's RoIAlign reads its input's raw memory as contiguous NCHW.

``RoIAlignFunction.forward`` hands ``input`` to the C++/CUDA kernel without ``.contiguous()`` (its backward does
make ``grad_output`` contiguous). A channels-last feature map -- which PyTorch convolutions return whenever their
input has channels-last strides, e.g. after a ``permute``-based channel LayerNorm -- is then read in the wrong
order: the pooled RoI features are scrambled, silently (a difference of 3.0 on unit-normal features). Mask R-CNN
trains its RPN (plain convolutions) but its RoI heads never learn. The fix makes the input contiguous first;
for an NCHW-contiguous input it is a no-op (no copy).
"""
import functools
import importlib

_PATCHED = '_vla_mm_contiguous_input'


def make_roi_align_stride_safe():
    """Wrap ``mmcv.ops.roi_align.RoIAlignFunction.forward`` so its input is NCHW-contiguous. Idempotent;
    a no-op when mmcv (or its compiled ops) is missing."""
    try:
        mod = importlib.import_module('mmcv.ops.roi_align')  # (mmcv.ops.roi_align the name is the function)
    except Exception:  # noqa: BLE001  (mmcv without compiled ops: nothing to fix)
        return False
    fn = mod.RoIAlignFunction.forward
    if getattr(fn, _PATCHED, False):
        return True

    @functools.wraps(fn)
    def forward(ctx, input, rois, *args, **kwargs):
        return fn(ctx, input.contiguous(), rois.contiguous(), *args, **kwargs)

    setattr(forward, _PATCHED, True)
    mod.RoIAlignFunction.forward = staticmethod(forward)
    return True
