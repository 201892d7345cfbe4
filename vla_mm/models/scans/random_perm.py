"""``random``: a fixed random permutation of the grid per model, inverted after the core.

The permutation of the training grid ``hw`` is a persistent buffer (``perm``, with its grid ``grid`` and the
``seed``), so a checkpoint carries it and a state-dict round trip reproduces the outputs exactly. Any other grid
``(h, w)`` gets ``torch.randperm(h * w, generator=torch.Generator().manual_seed(seed))`` from the stored seed
(on CPU, then moved), which is also how the training grid's permutation is drawn at build time.
A checkpoint's permutation replaces the built one even when its grid differs (fine-tuning at another size).
"""
from typing import Optional, Tuple

import torch

from ...registry import SCANS
from .base import ScanPass, ScanRoute


def seeded_permutation(num_tokens: int, seed: int) -> torch.Tensor:
    """The permutation of ``num_tokens`` grid positions drawn from ``seed`` (CPU, deterministic)."""
    return torch.randperm(num_tokens, generator=torch.Generator().manual_seed(int(seed)))


@SCANS.register_module(name=['random', 'RandomScan'])
class RandomScan(ScanRoute):
    """One pass in a fixed random order of the grid (one gather in, one inverse gather out).

    Args:
        seed (int): seed of the permutation (stored in the state dict; a loaded seed wins over the config's).
        hw (tuple[int, int], optional): the training grid, whose permutation is stored; without it only the
            seed is stored and every grid's permutation is drawn from it.
        reverse (bool): run the core right to left along the permutation.
    """

    def __init__(self, seed: int = 0, hw: Optional[Tuple[int, int]] = None, reverse: bool = False):
        super().__init__()
        self.reverse = reverse
        self.register_buffer('seed', torch.tensor(int(seed), dtype=torch.long))
        if hw is not None:
            h, w = int(hw[0]), int(hw[1])
            self.register_buffer('grid', torch.tensor([h, w], dtype=torch.long))
            self.register_buffer('perm', seeded_permutation(h * w, seed))
        self._sync()

    def _sync(self):
        """Python copies of the stored seed and grid (read on every call without a device sync)."""
        self._seed = int(self.seed)
        self._grid = tuple(int(v) for v in self.grid) if hasattr(self, 'perm') else None
        self._maps_cache.clear()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the checkpoint's permutation wins, whatever grid it was drawn for
        for name in ('grid', 'perm'):
            stored = state_dict.get(prefix + name)
            own = getattr(self, name, None)
            if stored is not None and (own is None or own.shape != stored.shape):
                device = self.seed.device
                self.register_buffer(name, torch.empty(stored.shape, dtype=torch.long, device=device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._sync()

    def grid_order(self, name, hw, device):
        if name != 'random':
            return super().grid_order(name, hw, device)
        if self._grid == (int(hw[0]), int(hw[1])):
            return self.perm.to(device)
        return seeded_permutation(int(hw[0]) * int(hw[1]), self._seed).to(device)

    def passes(self, ctx, num_heads):
        return [ScanPass('random', reverse=self.reverse)]

    def extra_repr(self):
        return f'seed={self._seed}, hw={self._grid}, reverse={self.reverse}'
