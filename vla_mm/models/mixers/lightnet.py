"""LightNet token mixer (additive linear recurrence: the decay is a running softmax normaliser of the keys).

Qin et al., "You Only Scan Once: Efficient Multi-dimension Sequential Modeling with LightNet" (arXiv 2405.21022),
as flash-linear-attention's layer: ``z_t = logcumsumexp_{s<=t} k_s`` (per key channel), key ``exp(k_t - z_t)``,
decay ``exp(z_{t-1} - z_t)``, so ``S_t = sum_{s<=t} exp(k_s - z_t) v_s`` is a softmax-weighted running sum and
``o_t = S_t^T silu(q_t)``; output ``RMSNorm(o_t) * swish(W_g2 W_g1 x_t)`` (a rank-128 gate) then ``W_o``;
optional short convolutions (no activation) on q, k, v.
Vision departs from the language model's layer in the order (the recurrence and the normaliser ``z`` run along
the scan route's 1-D order, each pass in its own direction, through :meth:`BaseMixer.scan`; the paper's single
multi-dimensional scan is what the routes replace; no recurrent inference mode) and in the heads (the
backbone's ``num_heads``, ``expand_ratio`` the key size per head, default ``dim / num_heads``; the language model
sets ``expand_ratio = 128`` and derives the heads from it).
"""
from functools import partial

import torch.nn.functional as F

from vla_mm.ops.gla import chunk_gla

from ...registry import MIXERS
from ._common import GatedRMSNorm, ShortConv, low_rank, normalised_writes, upcast
from .base import BaseMixer, linear_factory


@MIXERS.register_module(name='lightnet')
class LightNetMixer(BaseMixer):
    """LightNet mixer.

    Args:
        dim (int): channels C of the tokens.
        num_heads (int): heads; the value head size is ``C / num_heads``.
        expand_ratio (int, optional): the query / key size per head (None: ``C / num_heads``).
        gate_low_rank_dim (int): rank of the output gate projection (published 128).
        use_short_conv (bool): short convolutions (no activation) on q, k, v (published False).
        conv_size (int), conv_bias (bool): the short convolutions' kernel size and bias.
        norm_eps (float), elementwise_affine (bool): the output RMSNorm.
        linear_cfg (dict, optional): the linear layer of every projection.
    """

    directional = True

    def __init__(self, dim, num_heads=4, expand_ratio=None, gate_low_rank_dim=128, use_short_conv=False,
                 conv_size=4, conv_bias=False, norm_eps=1e-5, elementwise_affine=True, linear_cfg=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.num_heads = num_heads
        self.head_v_dim = dim // num_heads
        self.head_k_dim = expand_ratio or self.head_v_dim
        self.key_dim = num_heads * self.head_k_dim
        self.use_short_conv = use_short_conv
        self.Linear = linear_factory(linear_cfg)

        self.q_proj = self.Linear(dim, self.key_dim, bias=False)
        self.k_proj = self.Linear(dim, self.key_dim, bias=False)
        self.v_proj = self.Linear(dim, dim, bias=False)
        if use_short_conv:
            self.q_conv1d, self.k_conv1d, self.v_conv1d = (
                ShortConv(c, conv_size, conv_bias, None) for c in (self.key_dim, self.key_dim, dim))
        self.g_proj = low_rank(self.Linear, dim, gate_low_rank_dim, dim, bias=False)
        self.g_norm = GatedRMSNorm(dim, norm_eps, elementwise_affine)
        self.o_proj = self.Linear(dim, dim, bias=False)

    def core(self, q, k, v, heads, reverse=False, cu_seqlens=None):
        """One pass: q, k ``[B, N, Hs, dk]``, v ``[B, N, Hs, dv]`` (before the short convolutions), heads
        (a ``range`` of head ids) -> o ``[B, N, Hs, dv]``."""
        if self.use_short_conv:
            q, k, v = (conv(t, heads, reverse, cu_seqlens)
                       for conv, t in ((self.q_conv1d, q), (self.k_conv1d, k), (self.v_conv1d, v)))
        w, g = normalised_writes(upcast(k), reverse, cu_seqlens)  # keys exp(k_t - z_t), decays z_{t-1} - z_t
        return chunk_gla(F.silu(q), w.to(k.dtype), v, g, gate='vector', cu_seqlens=cu_seqlens, reverse=reverse)[0]

    def forward(self, x, ctx):
        q, k = (p(x).unflatten(-1, (-1, self.head_k_dim)) for p in (self.q_proj, self.k_proj))
        v = self.v_proj(x).unflatten(-1, (-1, self.head_v_dim))
        o = self.scan(partial(self.core, cu_seqlens=ctx.cu_seqlens), (q, k, v, range(self.num_heads)), ctx)
        return self.o_proj(self.g_norm(o.flatten(2), self.g_proj(x)))
