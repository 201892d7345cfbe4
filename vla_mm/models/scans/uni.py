"""``uni``: the row-major order, left to right (the tokens' own order).

:func:`~vla_mm.models.scans.base.build_scan` gives ``None`` for it (no route at all: zero overhead); the class
exists so that a route can still be named and run explicitly (one pass, no gather).
"""
from ...registry import SCANS
from .base import ScanPass, ScanRoute


@SCANS.register_module(name=['uni', 'UniScan'])
class UniScan(ScanRoute):
    """Row-major, forward: one pass, no gather."""

    is_identity = True

    def passes(self, ctx, num_heads):
        return [ScanPass('row')]
