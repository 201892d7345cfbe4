"""ABC (Attention with Bounded-memory Control) token mixer.

Peng et al., "ABC: Attention with Bounded-memory Control" (ACL 2022): M memory slots per head hold running
averages of the keys and values, weighted by a learned slot control ``phi_t = exp(s_t)``, ``s_t = W_s x_t``::

    K_t = sum_{i<=t} phi_i k_i^T / sum_{i<=t} phi_i,   V_t likewise,   o_t = V_t^T softmax(K_t q_t / sqrt(d))

with key width ``C / 2``, value width ``C``, 64 slots, ``s`` clamped to [-32, 32], rotary q and k, per-head RMSNorm
of the output times ``swish(W_g x)``, as flash-linear-attention's ``ABCAttention``. It is gated slot attention
(:func:`vla_mm.ops.gsa.gsa`) whose forget gate is not a projection but the running normaliser
``z_t = logcumsumexp(s)_t``: write weights ``exp(s_t - z_t)`` and log forget gate ``z_{t-1} - z_t``
(:func:`._common.normalised_writes`).
Vision departs from the language model's layer only in the order: the running averages, the rotary positions and
the optional short convolutions follow the scan route's 1-D order, each pass in its own direction (all computed
inside the core); no KV cache or recurrent inference mode.
"""
from functools import partial

import torch.nn.functional as F

from vla_mm.ops.gsa import gsa

from ...registry import MIXERS
from ._common import GatedRMSNorm, ShortConv, normalised_writes, rotary, upcast, qkv_widths
from .base import BaseMixer, linear_factory


@MIXERS.register_module(name='abc')
class ABCAttention(BaseMixer):
    """ABC mixer.

    Args:
        dim (int): channels C of the tokens.
        num_heads (int): heads.
        expand_k (float), expand_v (float): key / value widths ``C * expand`` (published 0.5 / 1).
        num_slots (int): memory slots M per head (published 64; at most 256).
        use_rope (bool): rotary q and k along each pass (published True).
        rope_theta (float): rotary base.
        clamp_min (float), clamp_max (float): clamp of the slot logits ``s`` (published -32, 32).
        use_input_gate (bool): swish on q, k, v (published False).
        use_output_gate (bool): swish output gate ``g_proj`` (published True).
        use_norm (bool): per-head RMSNorm of the output (published True).
        use_short_conv (bool): depthwise short convolutions with SiLU on q, k, v (published False).
        conv_size (int), conv_bias (bool): the short convolutions' kernel size and bias.
        norm_eps (float), elementwise_affine (bool): the output RMSNorm.
        linear_cfg (dict, optional): the linear layer of every projection (e.g. ``dict(type='BitLinear')``).
    """

    directional = True

    def __init__(self, dim, num_heads=4, expand_k=0.5, expand_v=1.0, num_slots=64, use_rope=True,
                 rope_theta=10000.0, clamp_min=-32.0, clamp_max=32.0, use_input_gate=False, use_output_gate=True,
                 use_norm=True, use_short_conv=False, conv_size=4, conv_bias=False, norm_eps=1e-5,
                 elementwise_affine=True, linear_cfg=None):
        super().__init__()
        self.num_heads, self.num_slots = num_heads, num_slots
        self.key_dim, self.value_dim = qkv_widths(dim, expand_k, expand_v, num_heads)
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        if use_rope and self.head_k_dim % 2:
            raise ValueError(f'rotary positions need an even key head size, got {self.head_k_dim}')
        self.use_rope, self.rope_theta = use_rope, rope_theta
        self.clamp_min, self.clamp_max = clamp_min, clamp_max
        self.use_input_gate, self.use_norm = use_input_gate, use_norm
        self.use_short_conv = use_short_conv
        self.Linear = linear_factory(linear_cfg)

        self.q_proj = self.Linear(dim, self.key_dim, bias=False)
        self.k_proj = self.Linear(dim, self.key_dim, bias=False)
        self.v_proj = self.Linear(dim, self.value_dim, bias=False)
        self.g_proj = self.Linear(dim, self.value_dim, bias=False) if use_output_gate else None
        self.s_proj = self.Linear(dim, num_heads * num_slots, bias=False)
        if use_short_conv:
            self.q_conv1d, self.k_conv1d, self.v_conv1d = (
                ShortConv(c, conv_size, conv_bias, 'silu') for c in (self.key_dim, self.key_dim, self.value_dim))
        self.g_norm = GatedRMSNorm(self.head_v_dim, norm_eps, elementwise_affine) if use_norm else None
        self.o_proj = self.Linear(self.value_dim, dim, bias=False)

    def core(self, q, k, v, s, heads, reverse=False, cu_seqlens=None):
        """One pass: q, k ``[B, N, Hs, dk]``, v ``[B, N, Hs, dv]`` (pre-convolution projections), s ``[B, N, Hs,
        M]`` slot logits, heads (a ``range`` of head ids) -> o ``[B, N, Hs, dv]``."""
        if self.use_short_conv:
            q, k, v = (conv(t, heads, reverse, cu_seqlens)
                       for conv, t in ((self.q_conv1d, q), (self.k_conv1d, k), (self.v_conv1d, v)))
        if self.use_input_gate:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        if self.use_rope:
            q, k = rotary(q, k, reverse, self.rope_theta)
        w, g = normalised_writes(s, reverse, cu_seqlens)
        return gsa(q, k, v, w.to(q.dtype), g, cu_seqlens=cu_seqlens, reverse=reverse)[0]

    def forward(self, x, ctx):
        q, k = (p(x).unflatten(-1, (-1, self.head_k_dim)) for p in (self.q_proj, self.k_proj))
        v = self.v_proj(x).unflatten(-1, (-1, self.head_v_dim))
        s = self.s_proj(x).unflatten(-1, (-1, self.num_slots))
        s = upcast(s).clamp(self.clamp_min, self.clamp_max)
        o = self.scan(partial(self.core, cu_seqlens=ctx.cu_seqlens), (q, k, v, s, range(self.num_heads)), ctx)
        gate = self.g_proj(x).unflatten(-1, (-1, self.head_v_dim)) if self.g_proj is not None else None
        if self.g_norm is not None:
            o = self.g_norm(o, gate)
        elif gate is not None:
            o = F.silu(gate) * o
        return self.o_proj(o.flatten(2))
