"""The generic scan route: runs a 1-D causal core over a 2-D token grid along one or more index maps.

A route is a list of :class:`ScanPass` (an order over the grid, a direction, a head range). The forward
:meth:`ScanRoute.forward` gathers the inputs once per distinct order (row-major needs no gather), runs the core
once per pass (reversal is the core's ``reverse=True``, never a flipped copy), weighs the outputs of passes that
share an order and a head range, maps them back to the tokens' own order once per (order, head range), sums what
covers the same heads and concatenates head ranges along dim 2.

Orders are named; the base knows ``'row'`` (row-major, the tokens' own order: the identity) and ``'col'``
(column-major); a subclass may add more (``'random'``) by overriding :meth:`ScanRoute.grid_order`.

MAE's kept tokens (``ctx.ids_keep [B, N_keep]``, grid positions of the tokens present, in the order of ``x``):
an order restricted to them visits the kept tokens by their rank in the full-grid order, per sample (a per-sample
gather, for every order including row-major since ``ids_keep`` need not be sorted).

Packed sequences (``ctx.cu_seqlens``): only routes whose passes are all row-major (uni, flip, bi) run on them;
the core passes ``ctx.cu_seqlens`` to its op, which reverses each sequence on its own. Any route that needs an
index map raises ``ValueError`` (one grid per packed sequence is not known).
"""
import abc
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ...registry import SCANS
from ..mixers.base import _accepts

__all__ = ['ScanPass', 'ScanRoute', 'DIRECTIONS', 'direction', 'build_scan']

Weight = Union[None, float, torch.Tensor]


@dataclass(frozen=True)
class ScanPass:
    """One run of the core: over the grid order ``order``, right to left if ``reverse``, on heads
    ``[heads[0], heads[1])`` of dim 2 (``None``: all heads)."""

    order: str = 'row'
    reverse: bool = False
    heads: Optional[Tuple[int, int]] = None


#: the four directions of a 2-D cross scan, by name: (order, reverse)
DIRECTIONS = {'row': ('row', False), 'row_rev': ('row', True), 'col': ('col', False), 'col_rev': ('col', True)}


def direction(name: str, heads: Optional[Tuple[int, int]] = None) -> ScanPass:
    """The pass of a named direction (``'row' | 'row_rev' | 'col' | 'col_rev'``) over ``heads``."""
    if name not in DIRECTIONS:
        raise ValueError(f'direction must be one of {sorted(DIRECTIONS)}, got {name!r}')
    order, reverse = DIRECTIONS[name]
    return ScanPass(order, reverse, heads)


def _num_heads(x):
    return len(x) if isinstance(x, range) else x.shape[2]


def _narrow_heads(x, start, stop, num_heads):
    """Heads ``[start, stop)`` of an input: dim 2 of a tensor (one of a single head, shared by all heads, whole),
    or the sub-range of a ``range`` of head ids."""
    if x is None or (start, stop) == (0, num_heads):
        return x
    if isinstance(x, range):
        return x[start:stop]
    return x if x.shape[2] == 1 else x[:, :, start:stop]


def _gather(x, index):
    """Tokens (dim 1) of ``x`` in the order ``index`` (``None``: as they are; ``[N]``: one map for the batch;
    ``[B, N]``: one per sample). An input of one token broadcasts over tokens and is never gathered."""
    if index is None or not torch.is_tensor(x) or x.shape[1] == 1:
        return x
    if index.dim() == 1:
        return x.index_select(1, index)
    return torch.gather(x, 1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:]))


class ScanRoute(nn.Module, metaclass=abc.ABCMeta):
    """Base of every route: ``forward(core, inputs, ctx) -> o``.

    ``core(*inputs, reverse: bool) -> o [B, N, H, V]`` is a 1-D causal core; ``inputs`` are tensors laid out
    ``[B, N, H, *]`` (token dim 1, head dim 2) or None (handed to the core as None). An input with one token
    (``[B or 1, 1, H, *]``, e.g. a per-head parameter) is sliced by heads but never gathered; one with one head
    (``[B, N, 1, *]``, shared by all heads) is gathered but never sliced; a ``range`` of head ids (``range(H)``)
    is sliced like a head dim, so a core learns which heads it holds as python ints (static under tracing).
    ``ctx`` is the :class:`~vla_mm.models.mixers.base.MixerContext` (``hw``, ``ids_keep``, ``cu_seqlens``,
    ``layer_idx``).

    Subclasses define :meth:`passes` and, for merges other than a sum, :meth:`weights`.
    """

    def __init__(self):
        super().__init__()
        self._maps_cache: Dict[tuple, Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]] = {}

    # ---- what a route is -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def passes(self, ctx, num_heads: int) -> Sequence[ScanPass]:
        """The route's passes for ``num_heads`` heads (each subclass says which)."""

    def weights(self, passes: Sequence[ScanPass], ctx) -> List[Weight]:
        """Per pass: None (weight 1: sum), a float, or a tensor of ``H * V`` channels (a per-channel weight)."""
        return [None] * len(passes)

    def grid_order(self, name: str, hw: Tuple[int, int], device) -> Optional[torch.Tensor]:
        """``order [h*w]`` long: the grid position (row-major index) visited at step ``i``; ``None`` for the
        row-major order itself (no gather)."""
        h, w = hw
        if name == 'row':
            return None
        if name == 'col':
            return torch.arange(h * w, device=device).view(h, w).t().reshape(-1)
        raise ValueError(f'{type(self).__name__} knows no grid order {name!r}')

    # ---- index maps ------------------------------------------------------------------------------------------
    def _grid_maps(self, name, hw, device):
        key = (name, int(hw[0]), int(hw[1]), device)
        maps = None if torch.compiler.is_compiling() else self._maps_cache.get(key)
        if maps is None:
            order = self.grid_order(name, hw, device)
            maps = (None, None) if order is None else (order, torch.argsort(order))
            # a compiled graph makes its maps itself: a cache filled while tracing fails its guard on the next call
            if not torch.compiler.is_compiling():
                self._maps_cache[key] = maps
        return maps

    def index_maps(self, name, ctx, device):
        """``(forward, inverse)`` token maps of the order ``name`` for this context: ``_gather(x, forward)`` is
        ``x`` in scan order and ``_gather(o, inverse)`` maps a core's output back; ``(None, None)`` for the
        identity, ``[N]`` for a whole grid, ``[B, N_keep]`` with kept-token ids."""
        order, rank = self._grid_maps(name, ctx.hw, device)
        if ctx.ids_keep is None:
            return order, rank
        ids = ctx.ids_keep.to(device)
        keep_rank = ids if rank is None else rank[ids]
        forward = torch.argsort(keep_rank, dim=1)
        return forward, torch.argsort(forward, dim=1)

    def _load_from_state_dict(self, *args, **kwargs):
        self._maps_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    # ---- the generic run -------------------------------------------------------------------------------------
    def _check(self, passes, ctx, n_tokens):
        needs_map = ctx.ids_keep is not None or any(p.order != 'row' for p in passes)
        if ctx.cu_seqlens is not None:
            if needs_map:
                raise ValueError(f'scan route {type(self).__name__} needs an index map over one token grid; packed '
                                 'sequences (cu_seqlens) run only under row-major routes (uni, flip, bi) and '
                                 'without ids_keep')
            return
        h, w = ctx.hw
        expected = h * w if ctx.ids_keep is None else ctx.ids_keep.shape[1]
        if n_tokens != expected:
            what = f'hw = {tuple(ctx.hw)}' if ctx.ids_keep is None else f'ids_keep of {expected} tokens'
            raise ValueError(f'scan route {type(self).__name__}: inputs have N = {n_tokens} tokens, {what} needs '
                             f'{expected}')

    @staticmethod
    def _weigh(o, weight, start, stop, num_heads):
        if weight is None:
            return o
        if not torch.is_tensor(weight):
            return o * weight
        per_head = math.prod(o.shape[3:])
        if weight.numel() != num_heads * per_head:
            raise ValueError(f'a per-channel merge weight of {weight.numel()} channels does not fit the core output '
                             f'of {num_heads} heads x {tuple(o.shape[3:])}')
        return o * weight.view(num_heads, per_head)[start:stop].view(o.shape[2:]).to(o.dtype)

    def forward(self, core: Callable[..., torch.Tensor], inputs: Sequence[Optional[torch.Tensor]], ctx):
        inputs = tuple(inputs)
        tensors = [x for x in inputs if torch.is_tensor(x)]
        ref = next((x for x in tensors if x.shape[1] != 1), tensors[0] if tensors else None)
        if ref is None:
            raise ValueError('a scan route needs at least one input tensor [B, N, H, *]')
        num_heads = max(_num_heads(x) for x in inputs if x is not None)
        passes = list(self.passes(ctx, num_heads))
        self._check(passes, ctx, ref.shape[1])
        weights = self.weights(passes, ctx)

        by_order: Dict[str, List[int]] = {}
        for i, p in enumerate(passes):
            by_order.setdefault(p.order, []).append(i)
        merged: Dict[Tuple[int, int], torch.Tensor] = {}
        for name, idxs in by_order.items():
            forward, inverse = self.index_maps(name, ctx, ref.device)
            spans = [passes[i].heads or (0, num_heads) for i in idxs]
            lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
            # one gather per order, over the smallest head range its passes use
            xs = [_gather(_narrow_heads(x, lo, hi, num_heads), forward) for x in inputs]
            outs: Dict[Tuple[int, int], torch.Tensor] = {}
            for i, (a, b) in zip(idxs, spans):
                xi = xs if (a, b) == (lo, hi) else [_narrow_heads(x, a - lo, b - lo, hi - lo) for x in xs]
                o = self._weigh(core(*xi, reverse=passes[i].reverse), weights[i], a, b, num_heads)
                outs[(a, b)] = o if (a, b) not in outs else outs[(a, b)] + o
            for span, o in outs.items():
                o = _gather(o, inverse)
                merged[span] = o if span not in merged else merged[span] + o
        spans = sorted(merged)
        if spans == [(0, num_heads)]:
            return merged[spans[0]]
        if spans[0][0] != 0 or spans[-1][1] != num_heads or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
            raise ValueError(f'{type(self).__name__}: head ranges {spans} of its passes must tile 0..{num_heads}')
        return torch.cat([merged[s] for s in spans], dim=2)


def build_scan(cfg, **defaults) -> Optional[nn.Module]:
    """Build a route of :data:`vla_mm.registry.SCANS` from ``cfg`` (a dict with ``type``, a registered name, or a
    built module). ``None``, ``'uni'`` and ``dict(type='uni')`` give ``None``: no route, the plain row-major
    path with zero overhead. ``defaults`` (e.g. ``channels=H*V`` for a gated bi merge) are passed only where the
    config does not set them and the route's constructor takes them."""
    if cfg is None or isinstance(cfg, nn.Module):
        return cfg
    cfg = dict(type=cfg) if isinstance(cfg, str) else dict(cfg)
    name = cfg.pop('type')
    cls = SCANS.get(name) if isinstance(name, str) else name
    if cls is None:
        raise KeyError(f'{name} is not in the vla_mm::scan route registry. Registered: {sorted(SCANS.module_dict)}')
    if getattr(cls, 'is_identity', False) and not cfg:
        return None
    for key, value in defaults.items():
        if key not in cfg and _accepts(cls, key):
            cfg[key] = value
    return cls(**cfg)
