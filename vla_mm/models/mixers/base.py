"""The token-mixer contract every mixer of :data:`vla_mm.registry.MIXERS` follows.

A mixer maps tokens ``x [B, N, C]`` to ``[B, N, C]``. Everything a mixer may need beyond the tokens travels in
one small :class:`MixerContext`, built once per forward by the backbone and handed to every block:

* ``hw``: the token grid ``(h, w)`` of the full image (``h * w`` is N unless only kept tokens are present);
* ``route``: the scan route (a :data:`vla_mm.registry.SCANS` module) that orders the grid into 1-D sequences
  for directional (causal) cores; ``None`` is the plain row-major order;
* ``mask``: ``[B, N]`` bool, True where a token is masked (SimMIM: the token is present but replaced);
* ``ids_keep``: ``[B, N_keep]`` long, the grid positions of the tokens present (MAE's encoder sees only
  these; ``x`` then has ``N_keep`` tokens in this order);
* ``cu_seqlens``: ``[S + 1]`` offsets of packed sequences (``B == 1``);
* ``layer_idx``: the block's index (routes that change with depth, e.g. alternating directions, read it).

A mixer declares its own constructor arguments (``dim`` always; ``num_heads`` only if it takes heads) and is
built by :func:`build_mixer`, which fills ``num_heads`` / ``layer_idx`` / ``num_layers`` (the backbone's depth) only
when the mixer's signature takes them. A mixer with its own initialisation schedule defines ``init_weights()``: the
backbones call it after their ``init_cfg`` (which redraws every Linear) and before a ``Pretrained`` checkpoint.

Directional mixers (``directional = True``: GLA, RetNet, DeltaNet, HGRN, RWKV, ...) express their recurrence
as a *core* ``core(*inputs, reverse=False) -> o`` over tensors laid out ``[B, N, H, *]`` and call
:meth:`BaseMixer.scan`, which runs the core under ``ctx.route`` (one index map per route, reversal through
``reverse=True``, never a flipped copy). Order-free mixers (non-causal linear attention, softmax attention)
ignore the route.
"""
import inspect
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ...registry import MIXERS, MODELS

__all__ = ['MixerContext', 'BaseMixer', 'build_mixer', 'linear_factory']


@dataclass(frozen=True)
class MixerContext:
    """What a mixer may read besides its tokens (see the module doc)."""

    hw: Tuple[int, int]
    route: Optional[nn.Module] = None
    mask: Optional[torch.Tensor] = None
    ids_keep: Optional[torch.Tensor] = None
    cu_seqlens: Optional[torch.Tensor] = None
    layer_idx: int = 0

    def at_layer(self, layer_idx: int, route: Optional[nn.Module] = ...) -> 'MixerContext':
        """This context for block ``layer_idx`` (and, if given, that block's own route: a route with learned
        parameters, such as a gated ``bi`` merge, belongs to one block)."""
        if route is ...:
            return replace(self, layer_idx=layer_idx)
        return replace(self, layer_idx=layer_idx, route=route)


class BaseMixer(nn.Module):
    """Base of every token mixer: a subclass defines ``forward(x [B, N, C], ctx: MixerContext) -> [B, N, C]``
    (``nn.Module`` raises for a mixer that does not)."""

    #: True when the mixer's core is a 1-D directional recurrence, so scan routes apply to it
    directional: bool = False

    def scan(self, core: Callable[..., torch.Tensor], inputs: Sequence[Optional[torch.Tensor]],
             ctx: MixerContext) -> torch.Tensor:
        """Run ``core(*inputs, reverse=bool) -> o [B, N, H, V]`` under the context's route (inputs ``[B, N, H, *]``
        or None). Without a route (or for order-free mixers) this is ``core(*inputs, reverse=False)``."""
        if ctx.route is None:
            return core(*inputs, reverse=False)
        return ctx.route(core, inputs, ctx)


def _accepts(cls, name):
    params = inspect.signature(cls.__init__).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def build_mixer(cfg, **defaults):
    """Build a mixer from ``cfg`` (``type`` = a registered short name) whatever the caller's default scope.

    ``defaults`` (e.g. ``dim``, ``num_heads``, ``layer_idx``) are passed only where the config does not set them,
    the mixer's constructor takes them and they are not None (None leaves the mixer's own default).
    """
    cfg = dict(cfg)
    name = cfg.pop('type')
    cls = MIXERS.get(name) if isinstance(name, str) else name
    if cls is None:
        raise KeyError(f'{name} is not in the vla_mm::token mixer registry. Registered: {sorted(MIXERS.module_dict)}')
    for key, value in defaults.items():
        if value is not None and key not in cfg and _accepts(cls, key):
            cfg[key] = value
    return cls(**cfg)


def linear_factory(linear_cfg=None):
    """The linear layer a mixer builds its projections with: ``nn.Linear`` by default, or a registered layer of
    :data:`vla_mm.registry.MODELS` (e.g. ``dict(type='BitLinear')``) so that any mixer can be made "bit".
    Returns a constructor ``(in_features, out_features, bias=True) -> nn.Module``."""
    if linear_cfg is None:
        return nn.Linear
    cfg = dict(linear_cfg)
    cls = MODELS.get(cfg.pop('type'))
    if cls is None:
        raise KeyError(f'linear layer {linear_cfg!r} is not registered in vla_mm MODELS')

    def make(in_features, out_features, bias=True):
        return cls(in_features, out_features, bias=bias, **cfg)
    return make
