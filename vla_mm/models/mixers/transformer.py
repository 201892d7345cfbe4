"""Softmax attention token mixer (the Transformer's multi-head attention) through PyTorch SDPA.

Vaswani et al., "Attention Is All You Need" (NeurIPS 2017); the layer follows flash-linear-attention's ``Attention``
(separate q/k/v/o projections without bias by default, optional per-head RMS qk-norm). Vision adaptation: attention
is non-causal over the image (order-free: scan routes do not apply), and position comes from the backbone's
embedding, or optionally from 2-D axial RoPE on the token grid instead of the language model's 1-D RoPE.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MIXERS
from .base import BaseMixer, linear_factory


def grid_positions(ctx, n, device):
    """``[B or 1, n, 2]`` (row, column) of each token: the row-major grid ``ctx.hw``, or ``ctx.ids_keep``'s cells."""
    h, w = ctx.hw
    ids = ctx.ids_keep if ctx.ids_keep is not None else torch.arange(h * w, device=device)[None]
    if ids.shape[-1] != n:
        raise ValueError(f'2-D RoPE needs the grid of the {n} tokens: hw={ctx.hw}, ids_keep={ids.shape[-1]}')
    return torch.stack([ids // w, ids % w], dim=-1)


def apply_rope_2d(x, pos, theta=10000.0):
    """Axial 2-D rotary embedding of ``x [B, N, H, D]`` (D divisible by 4): the first half of each head rotates
    with the row, the second with the column (halves rotated, frequencies ``theta^(-4i/D)``)."""
    d = x.shape[-1]
    dt = torch.promote_types(x.dtype, torch.float32)
    inv_freq = theta ** -(torch.arange(0, d // 2, 2, device=x.device, dtype=dt) / (d // 2))
    out = []
    for axis, part in enumerate(x.chunk(2, dim=-1)):
        ang = pos[..., axis].to(dt)[..., None] * inv_freq                     # [B or 1, N, D/4]
        cos, sin = (f(ang).to(x.dtype)[:, :, None] for f in (torch.cos, torch.sin))
        a, b = part.chunk(2, dim=-1)
        out += [a * cos - b * sin, b * cos + a * sin]
    return torch.cat(out, dim=-1)


def packed_attn_mask(cu_seqlens, n):
    """``[n, n]`` bool mask that keeps attention inside each packed sequence of ``cu_seqlens``."""
    seg = torch.searchsorted(cu_seqlens[1:-1].contiguous(), torch.arange(n, device=cu_seqlens.device), right=True)
    return seg[:, None] == seg[None, :]


@MIXERS.register_module(name='transformer')
class SoftmaxAttention(BaseMixer):
    """Multi-head softmax attention (non-causal), ``forward(x [B, N, C], ctx) -> [B, N, C]``.

    Args:
        dim (int): channels C; head size C / num_heads.
        num_heads (int): heads.
        qkv_bias (bool): bias of the q/k/v projections (fla: False; ViT uses True).
        proj_bias (bool): bias of the output projection (fla: False).
        qk_norm (bool): RMSNorm of q and k per head before the dot product (as fla's ``qk_norm``).
        rope (bool): rotate q and k by 2-D axial RoPE on the token grid (needs ``ctx.hw`` or ``ctx.ids_keep``).
        rope_theta (float): RoPE base.
        attn_drop (float): dropout on the attention weights (training only).
        norm_eps (float): qk-norm epsilon.
        linear_cfg (dict, optional): the projections' linear layer (e.g. ``dict(type='BitLinear')``).
    """

    directional = False

    def __init__(self, dim, num_heads=8, qkv_bias=False, proj_bias=False, qk_norm=False, rope=False,
                 rope_theta=10000.0, attn_drop=0.0, norm_eps=1e-5, linear_cfg=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        if rope and self.head_dim % 4:
            raise ValueError(f'2-D RoPE needs a head size divisible by 4, got {self.head_dim}')
        self.rope, self.rope_theta, self.attn_drop = rope, rope_theta, attn_drop
        self.Linear = linear_factory(linear_cfg)
        self.q_proj = self.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = self.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = self.Linear(dim, dim, bias=qkv_bias)
        self.o_proj = self.Linear(dim, dim, bias=proj_bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=norm_eps) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim, eps=norm_eps) if qk_norm else None

    def forward(self, x, ctx):
        B, N, C = x.shape
        q, k, v = (p(x).view(B, N, self.num_heads, self.head_dim) for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            pos = grid_positions(ctx, N, x.device)
            q, k = apply_rope_2d(q, pos, self.rope_theta), apply_rope_2d(k, pos, self.rope_theta)
        mask = None if ctx.cu_seqlens is None else packed_attn_mask(ctx.cu_seqlens, N)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.o_proj(o.transpose(1, 2).reshape(B, N, C))
