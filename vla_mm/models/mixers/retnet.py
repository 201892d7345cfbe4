"""RetNet multi-scale retention token mixer.

Sun et al., "Retentive Network: A Successor to Transformer for Large Language Models" (arXiv 2307.08621):
``S_t = gamma_h S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t`` with a fixed decay per head
``gamma_h = 1 - 2^(-5 - h)`` (multi-scale), rotary positions on q and k, key / value widths ``dim * 1`` /
``dim * 2``, per-head (group) RMSNorm of the output times a swish output gate, as flash-linear-attention's
``MultiScaleRetention`` (which uses RoPE for the paper's xPos); optional short convolutions on q, k, v.
Vision departs from the language model's layer only in the order: retention and the rotary positions run along
the scan route's 1-D order, counted in each pass's own direction (a reversed pass equals the forward pass of the
flipped sequence); no KV cache or recurrent inference mode; no grouped key/value heads.
"""
from functools import partial

import torch

from vla_mm.ops.gla import chunk_simple_gla

from ...registry import MIXERS
from ._common import FEATURE_MAPS, GatedRMSNorm, ShortConv, rotary, qkv_widths
from .base import BaseMixer, linear_factory


@MIXERS.register_module(name='retnet')
class MultiScaleRetention(BaseMixer):
    """RetNet mixer.

    Args:
        dim (int): channels C of the tokens.
        num_heads (int): heads (head h decays by ``1 - 2^(-5 - h)``).
        expand_k (float): key width ``C * expand_k`` (published 1).
        expand_v (float): value width ``C * expand_v`` (published 2).
        feature_map (str, optional): applied to q and k (published None).
        rotary (bool): rotary positions on q and k along each pass (published True).
        use_output_gate (bool): swish output gate ``g_proj`` after the norm (published True).
        use_short_conv (bool): depthwise short convolutions (with SiLU) on q, k, v (published False).
        conv_size (int), conv_bias (bool): the short convolutions' kernel size and bias.
        norm_eps (float), elementwise_affine (bool): the output RMSNorm.
        linear_cfg (dict, optional): the linear layer of every projection.
    """

    directional = True

    def __init__(self, dim, num_heads=8, expand_k=1.0, expand_v=2.0, feature_map=None, rotary=True,
                 use_output_gate=True, use_short_conv=False, conv_size=4, conv_bias=False, norm_eps=1e-5,
                 elementwise_affine=True, linear_cfg=None):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim, self.value_dim = qkv_widths(dim, expand_k, expand_v, num_heads)
        if feature_map not in FEATURE_MAPS:
            raise ValueError(f'feature_map must be one of {sorted(map(str, FEATURE_MAPS))}, got {feature_map!r}')
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        if rotary and self.head_k_dim % 2:
            raise ValueError(f'rotary positions need an even key head size, got {self.head_k_dim}')
        self.feature_map = FEATURE_MAPS[feature_map]
        self.rotary = rotary
        self.use_short_conv = use_short_conv
        self.Linear = linear_factory(linear_cfg)

        self.q_proj = self.Linear(dim, self.key_dim, bias=False)
        self.k_proj = self.Linear(dim, self.key_dim, bias=False)
        self.v_proj = self.Linear(dim, self.value_dim, bias=False)
        self.g_proj = self.Linear(dim, self.value_dim, bias=False) if use_output_gate else None
        if use_short_conv:
            self.q_conv1d, self.k_conv1d, self.v_conv1d = (
                ShortConv(c, conv_size, conv_bias, 'silu') for c in (self.key_dim, self.key_dim, self.value_dim))
        self.g_norm = GatedRMSNorm(self.head_v_dim, norm_eps, elementwise_affine)
        self.o_proj = self.Linear(self.value_dim, dim, bias=False)

    def core(self, q, k, v, heads, reverse=False, cu_seqlens=None):
        """One pass: q, k ``[B, N, Hs, dk]``, v ``[B, N, Hs, dv]`` (pre-convolution projections), heads (a
        ``range`` of head ids, hence which decays) -> o ``[B, N, Hs, dv]``."""
        if self.use_short_conv:
            q, k, v = (conv(t, heads, reverse, cu_seqlens)
                       for conv, t in ((self.q_conv1d, q), (self.k_conv1d, k), (self.v_conv1d, v)))
        if self.feature_map is not None:
            q, k = self.feature_map(q), self.feature_map(k)
        if self.rotary:
            q, k = rotary(q, k, reverse)
        # log(1 - 2^(-5 - h)) (ops.gla.retention_log_decay) for the heads held, made on q's device (no host copy);
        # not in half precision: 1 - 2^-10 rounds there
        h = torch.arange(heads.start, heads.stop, device=q.device,
                         dtype=torch.float64 if q.dtype == torch.float64 else torch.float32)
        g = torch.log1p(-torch.exp2(-5.0 - h)).expand(*q.shape[:3])
        return chunk_simple_gla(q, k, v, g, cu_seqlens=cu_seqlens, reverse=reverse)[0]

    def forward(self, x, ctx):
        q, k = (p(x).unflatten(-1, (-1, self.head_k_dim)) for p in (self.q_proj, self.k_proj))
        v = self.v_proj(x).unflatten(-1, (-1, self.head_v_dim))
        o = self.scan(partial(self.core, cu_seqlens=ctx.cu_seqlens), (q, k, v, range(self.num_heads)), ctx)
        gate = self.g_proj(x).unflatten(-1, (-1, self.head_v_dim)) if self.g_proj is not None else None
        return self.o_proj(self.g_norm(o, gate).flatten(2))
