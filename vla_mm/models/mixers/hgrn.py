"""HGRN token mixer (hierarchically gated linear recurrence, elementwise state).

Qin et al., "Hierarchically Gated Recurrent Neural Network for Sequence Modeling" (NeurIPS 2023), in
flash-linear-attention's real-valued layer: ``f_t = gamma + (1 - gamma) sigmoid(W_f x_t)`` (a forget gate with a
lower bound ``gamma`` that grows with depth, zero in the first layer), ``h_t = f_t h_{t-1} +
(1 - f_t) silu(W_i x_t)``, output ``RMSNorm(h_t) * swish(W_g x_t)`` then ``W_o``; optional short convolutions
(no activation) on the input and forget projections.
Vision departs from the language model's layer in the order (the recurrence runs along the scan route's 1-D
order, in either direction, through :meth:`BaseMixer.scan`; no recurrent inference mode) and in the lower bound:
a learned ``gamma`` per layer started at ``layer_idx / num_layers`` instead of one softmax over all layers'
logits (:class:`._common.LowerBound`); off when ``num_layers`` is not given. ``num_heads`` only groups channels
for multi-head routes: the recurrence is elementwise.
"""
from functools import partial

import torch.nn.functional as F

from vla_mm.ops.hgrn import hgrn

from ...registry import MIXERS
from ._common import GatedRMSNorm, LowerBound, ShortConv
from .base import BaseMixer, linear_factory


@MIXERS.register_module(name='hgrn')
class HGRNMixer(BaseMixer):
    """HGRN mixer.

    Args:
        dim (int): channels C of the tokens.
        num_heads (int): channel groups a multi-head route may scan differently (no effect otherwise).
        expand_ratio (float): recurrence width ``C * expand_ratio`` (published 1).
        num_layers (int, optional): the backbone's depth (filled in by the backbones); with ``layer_idx > 0`` it
            turns on the lower bound.
        layer_idx (int): the block's index (the first layer has no lower bound).
        use_short_conv (bool): short convolutions (no activation) on the input and forget projections
            (published False).
        conv_size (int), conv_bias (bool): the short convolutions' kernel size and bias.
        norm_eps (float), elementwise_affine (bool): the output RMSNorm.
        linear_cfg (dict, optional): the linear layer of every projection.
    """

    directional = True

    def __init__(self, dim, num_heads=1, expand_ratio=1, num_layers=None, layer_idx=0, use_short_conv=False,
                 conv_size=4, conv_bias=False, norm_eps=1e-5, elementwise_affine=True, linear_cfg=None):
        super().__init__()
        self.input_dim = int(dim * expand_ratio)
        if self.input_dim % num_heads:
            raise ValueError(f'the recurrence width {self.input_dim} must be divisible by num_heads ({num_heads})')
        self.num_heads = num_heads
        self.head_dim = self.input_dim // num_heads
        self.use_short_conv = use_short_conv
        self.Linear = linear_factory(linear_cfg)

        self.i_proj = self.Linear(dim, self.input_dim, bias=False)
        self.f_proj = self.Linear(dim, self.input_dim, bias=False)
        self.g_proj = self.Linear(dim, self.input_dim, bias=False)
        if use_short_conv:
            self.i_conv1d = ShortConv(self.input_dim, conv_size, conv_bias, None)
            self.f_conv1d = ShortConv(self.input_dim, conv_size, conv_bias, None)
        self.lower_bound = LowerBound(self.input_dim, layer_idx, num_layers) \
            if num_layers is not None and layer_idx > 0 else None
        self.g_norm = GatedRMSNorm(self.input_dim, norm_eps, elementwise_affine)
        self.o_proj = self.Linear(self.input_dim, dim, bias=False)

    def core(self, i, f, heads, reverse=False, cu_seqlens=None):
        """One pass: input and forget projections ``[B, N, Hs, d]`` (before the short convolutions), heads
        (a ``range`` of head ids) -> hidden states ``[B, N, Hs, d]``."""
        if self.use_short_conv:
            i = self.i_conv1d(i, heads, reverse, cu_seqlens)
            f = self.f_conv1d(f, heads, reverse, cu_seqlens)
        f = F.logsigmoid(f)
        if self.lower_bound is not None:
            f = self.lower_bound(f, heads)
        i = F.silu(i) * -f.expm1()  # (1 - f_t) silu(i_t)
        h = hgrn(i.flatten(2), f.flatten(2), cu_seqlens=cu_seqlens, reverse=reverse, gated_input=False)[0]
        return h.unflatten(-1, (-1, i.shape[-1]))

    def forward(self, x, ctx):
        i, f = (p(x).unflatten(-1, (-1, self.head_dim)) for p in (self.i_proj, self.f_proj))
        h = self.scan(partial(self.core, cu_seqlens=ctx.cu_seqlens), (i, f, range(self.num_heads)), ctx)
        return self.o_proj(self.g_norm(h.flatten(2), self.g_proj(x)))
