"""``flip``: the row-major order right to left (the core's ``reverse=True``), optionally alternating with depth."""
from ...registry import SCANS
from .base import ScanPass, ScanRoute


@SCANS.register_module(name=['flip', 'FlipScan'])
class FlipScan(ScanRoute):
    """Row-major, reversed: one pass, no gather.

    Args:
        alternate (bool): even layers (``ctx.layer_idx``) forward, odd layers reversed.
    """

    def __init__(self, alternate: bool = False):
        super().__init__()
        self.alternate = alternate

    def passes(self, ctx, num_heads):
        return [ScanPass('row', reverse=not self.alternate or ctx.layer_idx % 2 == 1)]

    def extra_repr(self):
        return f'alternate={self.alternate}'
