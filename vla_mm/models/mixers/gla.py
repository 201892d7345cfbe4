"""Gated linear attention (GLA) token mixer.

Yang et al., "Gated Linear Attention Transformers with Hardware-Efficient Training" (ICML 2024):
``S_t = diag(alpha_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t`` with a data-dependent per-key-channel decay
``alpha_t = exp(logsigmoid(W2 W1 x_t + b) / 16)`` from a rank-16 projection, key / value widths ``dim * 0.5`` /
``dim * 1``, per-head RMSNorm of the output times a swish output gate, optional short convolutions on q, k, v.
Vision departs from the language model's layer only in the order: the recurrence runs along the scan route's
1-D order (``reverse`` passes and non-causal routes through :meth:`BaseMixer.scan`); no KV cache or recurrent
inference mode; no grouped key/value heads.
"""
from functools import partial

import torch.nn.functional as F

from vla_mm.ops.gla import chunk_gla

from ...registry import MIXERS
from ._common import FEATURE_MAPS, GatedRMSNorm, ShortConv, low_rank, qkv_widths
from .base import BaseMixer, linear_factory


@MIXERS.register_module(name='gla')
class GatedLinearAttention(BaseMixer):
    """GLA mixer.

    Args:
        dim (int): channels C of the tokens.
        num_heads (int): heads.
        expand_k (float): key width ``C * expand_k`` (published 0.5).
        expand_v (float): value width ``C * expand_v`` (published 1).
        gate_low_rank_dim (int): rank of the gate projection (published 16).
        gate_logit_normalizer (float): the log gate is ``logsigmoid(.) / gate_logit_normalizer`` (published 16).
        clamp_min (float, optional): lower clamp of the log gate.
        feature_map (str, optional): applied to q and k (None / 'relu' / 'silu' / 'elu1'; published None).
        use_output_gate (bool): swish output gate ``g_proj`` after the norm (published True).
        use_short_conv (bool): depthwise short convolutions (with SiLU) on q, k, v (published False).
        conv_size (int), conv_bias (bool): the short convolutions' kernel size and bias.
        norm_eps (float), elementwise_affine (bool): the output RMSNorm.
        linear_cfg (dict, optional): the linear layer of every projection (e.g. ``dict(type='BitLinear')``).
    """

    directional = True

    def __init__(self, dim, num_heads=4, expand_k=0.5, expand_v=1.0, gate_low_rank_dim=16,
                 gate_logit_normalizer=16, clamp_min=None, feature_map=None, use_output_gate=True,
                 use_short_conv=False, conv_size=4, conv_bias=False, norm_eps=1e-5, elementwise_affine=True,
                 linear_cfg=None):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim, self.value_dim = qkv_widths(dim, expand_k, expand_v, num_heads)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f'feature_map must be one of {sorted(map(str, FEATURE_MAPS))}, got {feature_map!r}')
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self.gate_logit_normalizer = gate_logit_normalizer
        self.clamp_min = clamp_min
        self.feature_map = FEATURE_MAPS[feature_map]
        self.Linear = linear_factory(linear_cfg)

        self.q_proj = self.Linear(dim, self.key_dim, bias=False)
        self.k_proj = self.Linear(dim, self.key_dim, bias=False)
        self.v_proj = self.Linear(dim, self.value_dim, bias=False)
        self.g_proj = self.Linear(dim, self.value_dim, bias=False) if use_output_gate else None
        self.gk_proj = low_rank(self.Linear, dim, gate_low_rank_dim, self.key_dim, bias=True)
        if use_short_conv:
            self.q_conv1d, self.k_conv1d, self.v_conv1d = (
                ShortConv(c, conv_size, conv_bias, 'silu') for c in (self.key_dim, self.key_dim, self.value_dim))
        self.use_short_conv = use_short_conv
        self.g_norm = GatedRMSNorm(self.head_v_dim, norm_eps, elementwise_affine)
        self.o_proj = self.Linear(self.value_dim, dim, bias=False)

    def core(self, q, k, v, gk, heads, reverse=False, cu_seqlens=None):
        """One pass of the recurrence: q, k, gk ``[B, N, Hs, dk]``, v ``[B, N, Hs, dv]`` (pre-convolution
        projections), heads (a ``range`` of head ids) -> o ``[B, N, Hs, dv]``. The short convolutions run in the pass's
        direction."""
        if self.use_short_conv:
            q, k, v = (conv(t, heads, reverse, cu_seqlens)
                       for conv, t in ((self.q_conv1d, q), (self.k_conv1d, k), (self.v_conv1d, v)))
        if self.feature_map is not None:
            q, k = self.feature_map(q), self.feature_map(k)
        return chunk_gla(q, k, v, gk, gate='vector', cu_seqlens=cu_seqlens, reverse=reverse)[0]

    def forward(self, x, ctx):
        q, k, gk = (p(x).unflatten(-1, (-1, self.head_k_dim)) for p in (self.q_proj, self.k_proj, self.gk_proj))
        v = self.v_proj(x).unflatten(-1, (-1, self.head_v_dim))
        gk = F.logsigmoid(gk) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            gk = gk.clamp_min(self.clamp_min)
        o = self.scan(partial(self.core, cu_seqlens=ctx.cu_seqlens), (q, k, v, gk, range(self.num_heads)), ctx)
        if self.g_proj is not None:
            o = self.g_norm(o, self.g_proj(x).unflatten(-1, (-1, self.head_v_dim)))
        else:
            o = self.g_norm(o)
        return self.o_proj(o.flatten(2))
