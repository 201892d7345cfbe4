"""HGRN2 token mixer (gated linear RNN with outer-product state expansion).

Qin et al., "HGRN2: Gated Linear RNNs with State Expansion" (COLM 2024), as flash-linear-attention's layer: the
forget gate ``f_t = sigmoid(W_f x_t)`` (with HGRN's depth-growing lower bound) is also the key, ``k_t = 1 - f_t``,
so the per-head state ``S_t = diag(f_t) S_{t-1} + k_t i_t^T`` is ``expand_ratio`` times wider than HGRN's vector
state; ``o_t = S_t^T swish(W_q x_t)``, then RMSNorm over all channels and ``W_o``; optional short convolutions
(no activation) on q, f, i.
Vision departs from the language model's layer in the order (the recurrence runs along the scan route's 1-D order,
in either direction, through :meth:`BaseMixer.scan`; no recurrent inference mode), in the heads (the backbone's
``num_heads``, with ``expand_ratio`` the state expansion per head, default the head size ``dim / num_heads``;
the language model sets ``expand_ratio = 128`` and derives the heads from it) and in the lower bound (a learned
one per layer, :class:`._common.LowerBound`; off when ``num_layers`` is not given).
"""
from functools import partial

import torch.nn.functional as F

from vla_mm.ops.gla import chunk_gla

from ...registry import MIXERS
from ._common import GatedRMSNorm, LowerBound, ShortConv
from .base import BaseMixer, linear_factory


@MIXERS.register_module(name='hgrn2')
class HGRN2Mixer(BaseMixer):
    """HGRN2 mixer.

    Args:
        dim (int): channels C of the tokens.
        num_heads (int): heads; the input (value) head size is ``C / num_heads``.
        expand_ratio (int, optional): state expansion, the forget / query size per head (None: ``C / num_heads``).
        num_layers (int, optional): the backbone's depth (filled in by the backbones); with ``layer_idx > 0`` it
            turns on the lower bound.
        layer_idx (int): the block's index (the first layer has no lower bound).
        use_short_conv (bool): short convolutions (no activation) on q, f, i (published False).
        conv_size (int), conv_bias (bool): the short convolutions' kernel size and bias.
        norm_eps (float), elementwise_affine (bool): the output RMSNorm.
        linear_cfg (dict, optional): the linear layer of every projection.
    """

    directional = True

    def __init__(self, dim, num_heads=4, expand_ratio=None, num_layers=None, layer_idx=0, use_short_conv=False,
                 conv_size=4, conv_bias=False, norm_eps=1e-5, elementwise_affine=True, linear_cfg=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.num_heads = num_heads
        self.head_i_dim = dim // num_heads
        self.head_f_dim = expand_ratio or self.head_i_dim
        self.forget_dim = num_heads * self.head_f_dim
        self.use_short_conv = use_short_conv
        self.Linear = linear_factory(linear_cfg)

        self.q_proj = self.Linear(dim, self.forget_dim, bias=False)
        self.f_proj = self.Linear(dim, self.forget_dim, bias=False)
        self.i_proj = self.Linear(dim, dim, bias=False)
        if use_short_conv:
            self.q_conv1d, self.f_conv1d, self.i_conv1d = (
                ShortConv(c, conv_size, conv_bias, None) for c in (self.forget_dim, self.forget_dim, dim))
        self.lower_bound = LowerBound(self.forget_dim, layer_idx, num_layers) \
            if num_layers is not None and layer_idx > 0 else None
        self.g_norm = GatedRMSNorm(dim, norm_eps, elementwise_affine)
        self.o_proj = self.Linear(dim, dim, bias=False)

    def core(self, q, f, i, heads, reverse=False, cu_seqlens=None):
        """One pass: q, f ``[B, N, Hs, expand_ratio]``, i ``[B, N, Hs, C / H]`` (before the short convolutions),
        heads (a ``range`` of head ids) -> o ``[B, N, Hs, C / H]``."""
        if self.use_short_conv:
            q, f, i = (conv(t, heads, reverse, cu_seqlens)
                       for conv, t in ((self.q_conv1d, q), (self.f_conv1d, f), (self.i_conv1d, i)))
        g = F.logsigmoid(f)
        if self.lower_bound is not None:
            g = self.lower_bound(g, heads)
        k = (-g.expm1()).to(i.dtype)  # 1 - f_t: the forget gate's complement is the key (in q/v's dtype under autocast)
        return chunk_gla(F.silu(q).to(i.dtype), k, i, g, gate='vector', cu_seqlens=cu_seqlens, reverse=reverse)[0]

    def forward(self, x, ctx):
        q, f = (p(x).unflatten(-1, (-1, self.head_f_dim)) for p in (self.q_proj, self.f_proj))
        i = self.i_proj(x).unflatten(-1, (-1, self.head_i_dim))
        o = self.scan(partial(self.core, cu_seqlens=ctx.cu_seqlens), (q, f, i, range(self.num_heads)), ctx)
        return self.o_proj(self.g_norm(o.flatten(2)))
