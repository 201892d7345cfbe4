"""``bi``: row-major forward + row-major reversed (Vision Mamba's bidirectional scan), merged by a sum, a mean
or a learned per-channel gate. Two passes, no gather."""
import torch
import torch.nn as nn

from ...registry import SCANS
from .base import ScanPass, ScanRoute


@SCANS.register_module(name=['bi', 'BiScan'])
class BiScan(ScanRoute):
    """Forward + reverse over the row-major order.

    Args:
        merge (str): ``'sum'`` (o_f + o_r), ``'mean'`` ((o_f + o_r) / 2) or ``'gate'``
            (``s * o_f + (1 - s) * o_r`` with ``s = sigmoid(gate)`` per output channel; ``gate`` starts at 0,
            i.e. the gate starts as the mean).
        channels (int): the core output's channels ``H * V`` (required by ``'gate'``; the gate is a parameter of
            this many channels, so a gated route belongs to one mixer width; build one per block).
    """

    MERGES = ('sum', 'mean', 'gate')

    def __init__(self, merge: str = 'sum', channels: int = None):
        super().__init__()
        if merge not in self.MERGES:
            raise ValueError(f'bi merge must be one of {self.MERGES}, got {merge!r}')
        self.merge = merge
        if merge == 'gate':
            if not channels:
                raise ValueError("bi merge='gate' needs channels = H * V of the core's output")
            self.gate = nn.Parameter(torch.zeros(int(channels)))

    def passes(self, ctx, num_heads):
        return [ScanPass('row'), ScanPass('row', reverse=True)]

    def weights(self, passes, ctx):
        if self.merge == 'sum':
            return [None, None]
        if self.merge == 'mean':
            return [0.5, 0.5]
        s = torch.sigmoid(self.gate)
        return [s, 1 - s]

    def extra_repr(self):
        return f'merge={self.merge!r}' + (f', channels={self.gate.numel()}' if self.merge == 'gate' else '')
