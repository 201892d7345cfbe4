"""Gated DeltaNet token mixer: the delta rule with a Mamba2-style scalar decay per head and token.

Yang, Kautz and Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta Rule" (ICLR 2025):
``S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T``, ``o_t = S_t q_t`` with
``log alpha_t = -exp(A_log) * softplus(W_a x_t + dt_bias)`` (A in [1, 16], dt in [1e-3, 1e-1] at initialisation),
``beta_t = sigmoid(W_b x_t)``, depthwise short convolutions (kernel 4, SiLU) on q, k, v, L2-normalised q and k,
per-head RMSNorm of the output times ``swish(W_g x)``; head size ``0.75 C / heads`` for q/k and twice that for v
(about ``6 C^2`` parameters), as flash-linear-attention's ``GatedDeltaNet``.
Vision departs from the language model's layer only in the order: the recurrence and the short convolutions run
along the scan route's 1-D order, each pass in its own direction (the convolution sits inside the core, padded on
the pass's past side); no KV cache or recurrent inference mode; no grouped value heads.
"""
import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from vla_mm.ops.delta_rule import delta_rule

from ...registry import MIXERS
from ._common import GatedRMSNorm, ShortConv, upcast
from .base import BaseMixer, linear_factory


@MIXERS.register_module(name='gated_deltanet')
class GatedDeltaNet(BaseMixer):
    """Gated DeltaNet mixer.

    Args:
        dim (int): channels C of the tokens.
        num_heads (int): heads.
        head_dim (int, optional): q/k head size; default ``0.75 * C / num_heads`` (fla's 6 C^2 budget).
        expand_v (float): value head size ``head_dim * expand_v`` (published 2).
        use_gate (bool): swish output gate ``g_proj`` inside the output norm (published True).
        use_short_conv (bool): depthwise short convolutions with SiLU on q, k, v (published True).
        conv_size (int), conv_bias (bool): the short convolutions' kernel size and bias.
        allow_neg_eigval (bool): ``beta * 2`` (eigenvalues of ``I - beta k k^T`` in (-1, 1)).
        norm_eps (float): the output RMSNorm.
        linear_cfg (dict, optional): the linear layer of every projection (e.g. ``dict(type='BitLinear')``).
    """

    directional = True

    def __init__(self, dim, num_heads=6, head_dim=None, expand_v=2.0, use_gate=True, use_short_conv=True,
                 conv_size=4, conv_bias=False, allow_neg_eigval=False, norm_eps=1e-5, linear_cfg=None):
        super().__init__()
        if head_dim is None:
            if (3 * dim) % (4 * num_heads):
                raise ValueError(f'0.75 * dim ({dim}) must be divisible by num_heads ({num_heads}); '
                                 'or give head_dim')
            head_dim = 3 * dim // (4 * num_heads)
        self.num_heads, self.head_k_dim = num_heads, head_dim
        self.head_v_dim = int(head_dim * expand_v)
        if self.head_v_dim != head_dim * expand_v:
            raise ValueError(f'head_dim * expand_v must be an integer, got {head_dim} * {expand_v}')
        self.key_dim, self.value_dim = num_heads * self.head_k_dim, num_heads * self.head_v_dim
        self.allow_neg_eigval = allow_neg_eigval
        self.use_short_conv = use_short_conv
        self.Linear = linear_factory(linear_cfg)

        self.q_proj = self.Linear(dim, self.key_dim, bias=False)
        self.k_proj = self.Linear(dim, self.key_dim, bias=False)
        self.v_proj = self.Linear(dim, self.value_dim, bias=False)
        self.a_proj = self.Linear(dim, num_heads, bias=False)
        self.b_proj = self.Linear(dim, num_heads, bias=False)
        # Mamba2's decay parameters: A ~ U[1, 16], dt log-uniform in [1e-3, 1e-1] stored as softplus^-1(dt)
        self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(1, 16).log())
        dt = torch.exp(torch.rand(num_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp_min(1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        if use_short_conv:
            self.q_conv1d, self.k_conv1d, self.v_conv1d = (
                ShortConv(c, conv_size, conv_bias, 'silu') for c in (self.key_dim, self.key_dim, self.value_dim))
        self.g_proj = self.Linear(dim, self.value_dim, bias=False) if use_gate else None
        self.o_norm = GatedRMSNorm(self.head_v_dim, norm_eps)
        self.o_proj = self.Linear(self.value_dim, dim, bias=False)

    def log_decay(self, x):
        """``log alpha = -exp(A_log) * softplus(W_a x + dt_bias)`` ``[B, N, H]`` in float32 (or float64)."""
        a = upcast(self.a_proj(x))
        return -self.A_log.to(a.dtype).exp() * F.softplus(a + self.dt_bias.to(a.dtype))

    def core(self, q, k, v, g, beta, heads, reverse=False, cu_seqlens=None):
        """One pass: q, k ``[B, N, Hs, dk]``, v ``[B, N, Hs, dv]`` (pre-convolution projections), g (log decay),
        beta ``[B, N, Hs]``, heads (a ``range`` of head ids) -> o ``[B, N, Hs, dv]``. Short convolution (in the
        pass's direction), L2-normalised q and k, then the gated delta rule."""
        if self.use_short_conv:
            q, k, v = (conv(t, heads, reverse, cu_seqlens)
                       for conv, t in ((self.q_conv1d, q), (self.k_conv1d, k), (self.v_conv1d, v)))
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        # CUDA autocast runs the normalisation in fp32; the op's matmuls take q's dtype (fp32: no tensor cores)
        q, k = (F.normalize(t, p=2, dim=-1, eps=1e-6).to(v.dtype) for t in (q, k))
        return delta_rule(q, k, v, beta.to(q.dtype), g, cu_seqlens=cu_seqlens, reverse=reverse)[0]

    def forward(self, x, ctx):
        q, k = (p(x).unflatten(-1, (-1, self.head_k_dim)) for p in (self.q_proj, self.k_proj))
        v = self.v_proj(x).unflatten(-1, (-1, self.head_v_dim))
        beta = self.b_proj(x).sigmoid()
        if self.allow_neg_eigval:
            beta = beta * 2
        o = self.scan(partial(self.core, cu_seqlens=ctx.cu_seqlens),
                      (q, k, v, self.log_decay(x), beta, range(self.num_heads)), ctx)
        gate = self.g_proj(x).unflatten(-1, (-1, self.head_v_dim)) if self.g_proj is not None else None
        return self.o_proj(self.o_norm(o, gate).flatten(2))
