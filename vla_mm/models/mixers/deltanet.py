"""DeltaNet token mixer: linear attention with the delta-rule state update.

Schlag et al., "Linear Transformers Are Secretly Fast Weight Programmers" (ICML 2021) and Yang et al.,
"Parallelizing Linear Transformers with the Delta Rule over Sequence Length" (NeurIPS 2024):
``S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T``, ``o_t = S_t q_t`` with ``beta_t = sigmoid(W_b x_t)``
per head and SiLU, L2-normalised q and k, after depthwise short convolutions (kernel 4, SiLU) on q, k, v; per-head
RMSNorm of the output (gated by ``swish(W_g x)`` with ``use_gate``), as flash-linear-attention's ``DeltaNet``.
Vision departs from the language model's layer only in the order: the recurrence and the short convolutions run
along the scan route's 1-D order, each pass in its own direction (the convolution sits inside the core, padded on
the pass's past side); no KV cache or recurrent inference mode.
"""
from functools import partial

import torch.nn.functional as F

from vla_mm.ops.delta_rule import delta_rule

from ...registry import MIXERS
from ._common import FEATURE_MAPS, GatedRMSNorm, ShortConv, qkv_widths
from .base import BaseMixer, linear_factory

#: fla's names for DeltaNet's q/k activations ('elu' is elu + 1)
QK_ACTIVATIONS = {'silu': F.silu, 'relu': F.relu, 'elu': FEATURE_MAPS['elu1'], 'identity': None}


def qk_normalize(x, how):
    """DeltaNet's key/query normalisation: 'l2' (unit norm, what keeps the delta rule stable) or 'sum'."""
    if how == 'l2':
        return F.normalize(x, p=2, dim=-1, eps=1e-6)
    return x / x.sum(-1, keepdim=True)


@MIXERS.register_module(name='deltanet')
class DeltaNet(BaseMixer):
    """DeltaNet mixer.

    Args:
        dim (int): channels C of the tokens.
        num_heads (int): heads.
        expand_k (float), expand_v (float): key / value widths ``C * expand`` (published 1 / 1).
        use_beta (bool): data-dependent write strength ``beta = sigmoid(W_b x)`` per head (else 1).
        use_gate (bool): swish output gate ``g_proj`` inside the output norm (published False).
        use_short_conv (bool): depthwise short convolutions on q, k, v (published True).
        conv_size (int), conv_bias (bool): the short convolutions' kernel size and bias.
        allow_neg_eigval (bool): ``beta * 2`` (eigenvalues of ``I - beta k k^T`` in (-1, 1)).
        qk_activation (str): 'silu' (in the convolution, published) | 'relu' | 'elu' (elu + 1) | 'identity'.
        qk_norm (str): 'l2' (published) | 'sum'.
        norm_eps (float): the output RMSNorm.
        linear_cfg (dict, optional): the linear layer of every projection (e.g. ``dict(type='BitLinear')``).
    """

    directional = True

    def __init__(self, dim, num_heads=4, expand_k=1.0, expand_v=1.0, use_beta=True, use_gate=False,
                 use_short_conv=True, conv_size=4, conv_bias=False, allow_neg_eigval=False, qk_activation='silu',
                 qk_norm='l2', norm_eps=1e-5, linear_cfg=None):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim, self.value_dim = qkv_widths(dim, expand_k, expand_v, num_heads)
        if qk_activation not in QK_ACTIVATIONS:
            raise ValueError(f'qk_activation must be one of {sorted(QK_ACTIVATIONS)}, got {qk_activation!r}')
        if qk_norm not in ('l2', 'sum'):
            raise ValueError(f"qk_norm must be 'l2' or 'sum', got {qk_norm!r}")
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self.qk_activation, self.qk_norm = qk_activation, qk_norm
        self.allow_neg_eigval = allow_neg_eigval
        self.use_short_conv = use_short_conv
        self.Linear = linear_factory(linear_cfg)

        self.q_proj = self.Linear(dim, self.key_dim, bias=False)
        self.k_proj = self.Linear(dim, self.key_dim, bias=False)
        self.v_proj = self.Linear(dim, self.value_dim, bias=False)
        self.b_proj = self.Linear(dim, num_heads, bias=False) if use_beta else None
        if use_short_conv:
            qk_act = 'silu' if qk_activation == 'silu' else None
            self.q_conv1d = ShortConv(self.key_dim, conv_size, conv_bias, qk_act)
            self.k_conv1d = ShortConv(self.key_dim, conv_size, conv_bias, qk_act)
            self.v_conv1d = ShortConv(self.value_dim, conv_size, conv_bias, 'silu')
        self.g_proj = self.Linear(dim, self.value_dim, bias=False) if use_gate else None
        self.o_norm = GatedRMSNorm(self.head_v_dim, norm_eps)
        self.o_proj = self.Linear(self.value_dim, dim, bias=False)

    def core(self, q, k, v, beta, heads, reverse=False, cu_seqlens=None):
        """One pass: q, k ``[B, N, Hs, dk]``, v ``[B, N, Hs, dv]`` (pre-convolution projections), beta
        ``[B, N, Hs]``, heads (a ``range`` of head ids) -> o ``[B, N, Hs, dv]``. Short convolution (in the pass's
        direction), activation and q/k normalisation, then the delta rule."""
        if self.use_short_conv:  # the q/k convolutions carry the SiLU when qk_activation is 'silu'
            q, k, v = (conv(t, heads, reverse, cu_seqlens)
                       for conv, t in ((self.q_conv1d, q), (self.k_conv1d, k), (self.v_conv1d, v)))
        else:
            v = F.silu(v)
            if self.qk_activation == 'silu':
                q, k = F.silu(q), F.silu(k)
        act = QK_ACTIVATIONS[self.qk_activation]
        if self.qk_activation != 'silu' and act is not None:
            q, k = act(q), act(k)
        # CUDA autocast runs the normalisation in fp32; the op's matmuls take q's dtype (fp32: no tensor cores)
        q, k = (qk_normalize(t, self.qk_norm).to(v.dtype) for t in (q, k))
        return delta_rule(q, k, v, beta.to(q.dtype), cu_seqlens=cu_seqlens, reverse=reverse)[0]

    def forward(self, x, ctx):
        q, k = (p(x).unflatten(-1, (-1, self.head_k_dim)) for p in (self.q_proj, self.k_proj))
        v = self.v_proj(x).unflatten(-1, (-1, self.head_v_dim))
        beta = self.b_proj(x).sigmoid() if self.b_proj is not None else x.new_ones(*x.shape[:2], self.num_heads)
        if self.allow_neg_eigval:
            beta = beta * 2
        o = self.scan(partial(self.core, cu_seqlens=ctx.cu_seqlens), (q, k, v, beta, range(self.num_heads)), ctx)
        gate = self.g_proj(x).unflatten(-1, (-1, self.head_v_dim)) if self.g_proj is not None else None
        return self.o_proj(self.o_norm(o, gate).flatten(2))
