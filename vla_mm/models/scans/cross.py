"""``cross``: VMamba's cross-scan / cross-merge: row-major and column-major, each forward and reversed (4 passes
over 2 index maps: the column-major map costs one gather of the inputs and one inverse gather of the summed
column outputs), merged back by a sum (or a mean)."""
from ...registry import SCANS
from .base import ScanRoute, direction

CROSS_DIRECTIONS = ('row', 'row_rev', 'col', 'col_rev')


@SCANS.register_module(name=['cross', 'CrossScan'])
class CrossScan(ScanRoute):
    """Four directions over all heads.

    Args:
        merge (str): ``'sum'`` (VMamba) or ``'mean'`` (the sum / 4).
    """

    def __init__(self, merge: str = 'sum'):
        super().__init__()
        if merge not in ('sum', 'mean'):
            raise ValueError(f"cross merge must be 'sum' or 'mean', got {merge!r}")
        self.merge = merge

    def passes(self, ctx, num_heads):
        return [direction(d) for d in CROSS_DIRECTIONS]

    def weights(self, passes, ctx):
        w = None if self.merge == 'sum' else 1.0 / len(passes)
        return [w] * len(passes)

    def extra_repr(self):
        return f'merge={self.merge!r}'
