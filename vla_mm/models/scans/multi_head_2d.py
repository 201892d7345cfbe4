"""``multi_head_2d``: head groups take different directions (one pass per group), e.g. the four cross
directions, one per quarter of the heads: the cost of one pass over all heads, with every direction present."""
from ...registry import SCANS
from .base import DIRECTIONS, ScanRoute, direction
from .cross import CROSS_DIRECTIONS


def head_groups(num_heads: int, num_groups: int):
    """``[start, stop)`` head ranges of ``num_groups`` contiguous groups sized as evenly as possible (the first
    ``num_heads % num_groups`` groups get one head more)."""
    base, extra = divmod(num_heads, num_groups)
    bounds = [0]
    for g in range(num_groups):
        bounds.append(bounds[-1] + base + (g < extra))
    return list(zip(bounds[:-1], bounds[1:]))


@SCANS.register_module(name=['multi_head_2d', 'mh2d', 'MultiHead2DScan'])
class MultiHead2DScan(ScanRoute):
    """Group ``g`` of the heads (dim 2) runs under ``directions[g]``; the groups' outputs are concatenated back.

    Args:
        directions (sequence of str): one per head group, each ``'row' | 'row_rev' | 'col' | 'col_rev'``;
            the heads are split into ``len(directions)`` contiguous groups as evenly as possible (H need not be
            divisible; H must be at least ``len(directions)``).

    A core whose result depends on per-head parameters must take them as inputs (``[B or 1, N or 1, H, *]``) so
    that each group sees its own heads' slice.
    """

    def __init__(self, directions=CROSS_DIRECTIONS):
        super().__init__()
        self.directions = tuple(directions)
        if not self.directions:
            raise ValueError('multi_head_2d needs at least one direction')
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad:
            raise ValueError(f'multi_head_2d directions must be among {sorted(DIRECTIONS)}, got {bad}')

    def passes(self, ctx, num_heads):
        if num_heads < len(self.directions):
            raise ValueError(f'multi_head_2d with {len(self.directions)} directions needs at least as many heads, '
                             f'got H = {num_heads}')
        return [direction(d, span) for d, span in zip(self.directions, head_groups(num_heads, len(self.directions)))]

    def extra_repr(self):
        return f'directions={self.directions}'
