"""Gated Slot Attention (GSA) token mixer.

Zhang et al., "Gated Slot Attention for Efficient Linear-Time Sequence Modeling" (NeurIPS 2024): a bounded memory
of M slots per head, written with a data-dependent forget gate ``alpha_t = exp(logsigmoid(W_f x_t) / 8)`` per slot
and ``s_t = 1 - alpha_t``::

    K_t = K_{t-1} diag(alpha_t) + k_t s_t^T,   V_t = diag(alpha_t) V_{t-1} + s_t v_t^T
    o_t = V_t^T softmax(K_t^T q_t)

with swish feature maps on q and k, SiLU on v, SiLU then RMSNorm (over all channels) on the output, 64 slots,
score scale 1, as flash-linear-attention's ``GatedSlotAttention``; optional short convolutions (off by default).
Vision departs from the language model's layer only in the order: the recurrence (and the short convolutions, in
the core, padded on the pass's past side) runs along the scan route's 1-D order, each pass in its own direction;
no KV cache or recurrent inference mode; no grouped key/value heads.
"""
from functools import partial

import torch.nn.functional as F

from vla_mm.ops.gsa import gsa

from ...registry import MIXERS
from ._common import FEATURE_MAPS, GatedRMSNorm, ShortConv, upcast, qkv_widths
from .base import BaseMixer, linear_factory

@MIXERS.register_module(name='gsa')
class GatedSlotAttention(BaseMixer):
    """GSA mixer.

    Args:
        dim (int): channels C of the tokens.
        num_heads (int): heads.
        expand_k (float), expand_v (float): key / value widths ``C * expand`` (published 1 / 1; the output norm
            runs over the value width, which the output projection maps back to C).
        num_slots (int): memory slots M per head (published 64; at most 256).
        gate_logit_normalizer (float): ``log alpha = logsigmoid(.) / gate_logit_normalizer`` (published 8).
        feature_map (str): on q and k, 'swish' (published) | 'relu' | 'elu1' | 'identity'.
        scale (float): scale of the slot scores (published 1).
        use_short_conv (bool): depthwise short convolutions with SiLU on q, k, v (published False).
        conv_size (int), conv_bias (bool): the short convolutions' kernel size and bias.
        norm_eps (float), elementwise_affine (bool): the output RMSNorm.
        linear_cfg (dict, optional): the linear layer of every projection (e.g. ``dict(type='BitLinear')``).
    """

    directional = True

    def __init__(self, dim, num_heads=4, expand_k=1.0, expand_v=1.0, num_slots=64, gate_logit_normalizer=8,
                 feature_map='swish', scale=1.0, use_short_conv=False, conv_size=4, conv_bias=False, norm_eps=1e-5,
                 elementwise_affine=True, linear_cfg=None):
        super().__init__()
        self.num_heads, self.num_slots = num_heads, num_slots
        self.key_dim, self.value_dim = qkv_widths(dim, expand_k, expand_v, num_heads)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f'feature_map must be one of {sorted(map(str, FEATURE_MAPS))}, got {feature_map!r}')
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self.gate_logit_normalizer = gate_logit_normalizer
        self.feature_map = FEATURE_MAPS[feature_map]
        self.scale = scale
        self.use_short_conv = use_short_conv
        self.Linear = linear_factory(linear_cfg)

        self.q_proj = self.Linear(dim, self.key_dim, bias=False)
        self.k_proj = self.Linear(dim, self.key_dim, bias=False)
        self.v_proj = self.Linear(dim, self.value_dim, bias=False)
        self.f_proj = self.Linear(dim, num_heads * num_slots, bias=False)
        if use_short_conv:
            self.q_conv1d, self.k_conv1d, self.v_conv1d = (
                ShortConv(c, conv_size, conv_bias, 'silu') for c in (self.key_dim, self.key_dim, self.value_dim))
        self.g_norm = GatedRMSNorm(self.value_dim, norm_eps, elementwise_affine)
        self.o_proj = self.Linear(self.value_dim, dim, bias=False)

    def core(self, q, k, v, f, heads, reverse=False, cu_seqlens=None):
        """One pass: q, k ``[B, N, Hs, dk]``, v ``[B, N, Hs, dv]`` (pre-convolution projections), f ``[B, N, Hs,
        M]`` log forget gates, heads (a ``range`` of head ids) -> o ``[B, N, Hs, dv]``."""
        if self.use_short_conv:
            q, k, v = (conv(t, heads, reverse, cu_seqlens)
                       for conv, t in ((self.q_conv1d, q), (self.k_conv1d, k), (self.v_conv1d, v)))
        if self.feature_map is not None:
            q, k = self.feature_map(q), self.feature_map(k)
        v = F.silu(v)
        s = (-f.expm1()).to(q.dtype)  # 1 - alpha
        return gsa(q, k, v, s, f, scale=self.scale, cu_seqlens=cu_seqlens, reverse=reverse)[0]

    def forward(self, x, ctx):
        q, k = (p(x).unflatten(-1, (-1, self.head_k_dim)) for p in (self.q_proj, self.k_proj))
        v = self.v_proj(x).unflatten(-1, (-1, self.head_v_dim))
        f = self.f_proj(x).unflatten(-1, (-1, self.num_slots))
        f = F.logsigmoid(upcast(f)) / self.gate_logit_normalizer
        o = self.scan(partial(self.core, cu_seqlens=ctx.cu_seqlens), (q, k, v, f, range(self.num_heads)), ctx)
        return self.o_proj(self.g_norm(F.silu(o.flatten(2))))
