"""RWKV6 ("Finch") time-mixing token mixer.

Peng et al., "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence" (arXiv 2404.05892), as
flash-linear-attention's ``RWKV6Attention``: token shift ``delta_t = x_{t-1} - x_t``; data-dependent linear
interpolation (ddlerp): a rank-32 tanh LoRA of ``x + mu * delta`` gives five mixes ``m_*`` (plus biases), and
``r, w, k, v, g = W_*(x + m_* delta)`` (``w`` through a rank-64 tanh LoRA with bias); decay ``exp(-exp(w_t))``
per key channel; ``S_t = diag(exp(-exp(w_t))) S_{t-1} + k_t v_t^T`` and ``o_t = (S_{t-1} + diag(u) k_t v_t^T)^T
r_t`` (the bonus ``u`` weighs the current token); per-head GroupNorm times ``swish(g)`` then ``W_o``; key / value
widths ``dim * 0.5`` / ``dim * 1``.
Vision departs from the language model's layer in the order: the token shift, the projections that follow it
and the recurrence all run along the scan route's 1-D order, each pass shifting from the previous token in its
own direction (so the core holds the whole time-mix but ``W_o``; a reversed pass equals the forward pass of the
flipped sequence); no recurrent inference mode. Initialisation (``init='rwkv'``, the default) is RWKV-LM's v6
schedule over the depth, as Vision-RWKV keeps it: per channel ``i`` of ``C`` and layer ``l`` of ``L``, the mixes
``mu_x, mu_w, mu_k = 1 - (i/C)^(1 - l/L)``, ``mu_v`` that minus ``0.3 l/(L-1)``, ``mu_r, mu_g = 1 - (i/C)^(0.5 (1 -
l/L))``; the decay base ``w_0[n] = -6 + 5 (n/(K-1))^(0.7 + 1.3 l/(L-1))`` over the K key channels (slow decays,
``exp(-exp(w_0))`` in 0.9975..0.69); the bonus ``u[n] = l/(L-1) (1 - n/(K-1)) + 0.1 ((n+1) mod 3 - 1)``; the LoRAs'
down projections zero and up projections uniform in +-0.01; ``W_o`` zero (the block's time-mix branch starts
silent). ``W_r, W_k, W_v, W_g`` keep the backbone's initialisation. ``init='zero'`` is flash-linear-attention's
(``mu``, the mix biases and ``u`` at zero, the decay base zero: every decay starts at ``exp(-1)``); with it the
shapes job collapsed in bf16 on the H200 (docs/results.md).
Cost under routes: every pass runs the time-mix projections (bi: 2x, cross: 4x, as the recurrence); under
``multi_head_2d`` each of the D head groups also runs them for all heads and keeps its own (D x the projections).
"""
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from vla_mm.ops.gla import chunk_rwkv6

from ...registry import MIXERS
from ._common import head_slice, shift_tokens, upcast, qkv_widths
from .base import BaseMixer, linear_factory

MIXES = ('r', 'w', 'k', 'v', 'g')


@MIXERS.register_module(name='rwkv6')
class RWKV6Mixer(BaseMixer):
    """RWKV6 time-mix.

    Args:
        dim (int): channels C of the tokens.
        num_heads (int): heads.
        expand_k (float): key / receptance / decay width ``C * expand_k`` (published 0.5).
        expand_v (float): value / gate width ``C * expand_v`` (published 1).
        proj_low_rank_dim (int): rank of the ddlerp LoRA, per mix (published 32).
        gate_low_rank_dim (int): rank of the decay LoRA (published 64).
        norm_eps (float), elementwise_affine (bool): the per-head GroupNorm.
        linear_cfg (dict, optional): the linear layer of every projection.
        init (str): ``'rwkv'`` (RWKV-LM's schedule over the depth) or ``'zero'`` (flash-linear-attention's).
        layer_idx (int), num_layers (int, optional): this layer and the depth, for ``init='rwkv'`` (filled in by the
            backbone; without ``num_layers`` the schedule of a first layer).
    """

    directional = True

    def __init__(self, dim, num_heads=4, expand_k=0.5, expand_v=1.0, proj_low_rank_dim=32, gate_low_rank_dim=64,
                 norm_eps=1e-5, elementwise_affine=True, linear_cfg=None, init='rwkv', layer_idx=0, num_layers=None):
        super().__init__()
        if init not in ('rwkv', 'zero'):
            raise ValueError(f"init must be 'rwkv' or 'zero', got {init!r}")
        self.init, self.layer_idx, self.num_layers = init, layer_idx, num_layers
        self.num_heads = num_heads
        self.key_dim, self.value_dim = qkv_widths(dim, expand_k, expand_v, num_heads)
        self.head_k_dim, self.head_v_dim = self.key_dim // num_heads, self.value_dim // num_heads
        self.proj_low_rank_dim = proj_low_rank_dim
        self.norm_eps = norm_eps
        self.Linear = Linear = linear_factory(linear_cfg)

        # ddlerp: mu and a rank-r LoRA per mix (down for all five at once, up one per mix; its bias is x_bias)
        self.x_mu = nn.Parameter(torch.zeros(dim))
        self.x_down = Linear(dim, proj_low_rank_dim * len(MIXES), bias=False)
        self.x_up = nn.ModuleList(Linear(proj_low_rank_dim, dim, bias=True) for _ in MIXES)
        self.r_proj = Linear(dim, self.key_dim, bias=False)
        self.w_proj = nn.Sequential(Linear(dim, gate_low_rank_dim, bias=False), nn.Tanh(),
                                    Linear(gate_low_rank_dim, self.key_dim, bias=True))
        self.k_proj = Linear(dim, self.key_dim, bias=False)
        self.v_proj = Linear(dim, self.value_dim, bias=False)
        self.g_proj = Linear(dim, self.value_dim, bias=False)
        self.bonus = nn.Parameter(torch.zeros(num_heads, self.head_k_dim))
        self.norm_weight = nn.Parameter(torch.ones(self.value_dim)) if elementwise_affine else None
        self.norm_bias = nn.Parameter(torch.zeros(self.value_dim)) if elementwise_affine else None
        self.o_proj = Linear(self.value_dim, dim, bias=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """The ``init`` schedule; the backbone calls it again after its ``init_cfg`` (which redraws every Linear)."""
        ups, w_down, w_up = self.x_up, self.w_proj[0], self.w_proj[2]
        if self.init == 'zero':
            for t in [self.x_mu, self.bonus, w_up.bias] + [up.bias for up in ups]:
                t.zero_()
            return
        l, L = (self.layer_idx, self.num_layers) if self.num_layers else (0, 1)
        r01 = l / (L - 1) if L > 1 else 0.0
        r1 = 1.0 - l / L
        dim, K = self.x_mu.numel(), self.key_dim
        ddd = torch.arange(dim, dtype=torch.float64) / dim
        n = torch.arange(K, dtype=torch.float64) / max(K - 1, 1)
        full, half = 1 - ddd ** r1, 1 - ddd ** (0.5 * r1)
        mu = {'r': half, 'w': full, 'k': full, 'v': full - 0.3 * r01, 'g': half}
        self.x_mu.copy_(full)
        for name, up in zip(MIXES, ups):
            up.bias.copy_(mu[name])
            nn.init.uniform_(up.weight, -0.01, 0.01)
        nn.init.zeros_(self.x_down.weight)
        nn.init.zeros_(w_down.weight)
        nn.init.uniform_(w_up.weight, -0.01, 0.01)
        w_up.bias.copy_(-6 + 5 * n ** (0.7 + 1.3 * r01))
        nn.init.zeros_(self.o_proj.weight)
        k = torch.arange(K)
        self.bonus.copy_((r01 * (1 - n) + ((k + 1) % 3 - 1) * 0.1).view_as(self.bonus))

    def time_mix(self, x, delta):
        """``r, w, k, v, g`` (all heads, ``[B, N, width]``) from tokens and their shift differences."""
        z = torch.tanh(self.x_down(x + delta * self.x_mu))
        z = z.unflatten(-1, (-1, self.proj_low_rank_dim)).unbind(2)
        mixes = [up(zi) for up, zi in zip(self.x_up, z)]
        projs = (self.r_proj, self.w_proj, self.k_proj, self.v_proj, self.g_proj)
        return [p(x + delta * m) for p, m in zip(projs, mixes)]

    def core(self, x, heads, reverse=False, cu_seqlens=None):
        """One pass of the whole time-mix but ``W_o``: x ``[B, N, 1, C]`` (the tokens, one copy shared by all
        heads: a route gathers it once per order), heads (a ``range`` of head ids) -> gated, normalised o
        ``[B, N, Hs, dv]``."""
        hs = head_slice(heads)
        x = x[:, :, 0]
        delta = shift_tokens(x, 1, reverse, cu_seqlens) - x
        r, w, k, v, g = self.time_mix(x, delta)
        r, w, k = (t.unflatten(-1, (-1, self.head_k_dim))[:, :, hs] for t in (r, w, k))
        v, g = (t.unflatten(-1, (-1, self.head_v_dim))[:, :, hs] for t in (v, g))
        o = chunk_rwkv6(r, k, v, -upcast(w).exp(), self.bonus[hs], cu_seqlens=cu_seqlens, reverse=reverse)[0]
        o = F.layer_norm(upcast(o), (self.head_v_dim,), eps=self.norm_eps)  # GroupNorm with one group per head
        if self.norm_weight is not None:
            nw, nb = (t.unflatten(0, (-1, self.head_v_dim))[hs] for t in (self.norm_weight, self.norm_bias))
            o = o * nw + nb
        return (o * F.silu(upcast(g))).to(v.dtype)

    def forward(self, x, ctx):
        o = self.scan(partial(self.core, cu_seqlens=ctx.cu_seqlens), (x.unsqueeze(2), range(self.num_heads)), ctx)
        return self.o_proj(o.flatten(2))
