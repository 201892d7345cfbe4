"""Non-causal (bidirectional) linear attention token mixer.

Katharopoulos et al., "Transformers are RNNs" (ICML 2020): o_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / (φ(q_i)ᵀ Σ_j φ(k_j)).
Options cover the variants the field uses: the feature map φ (identity, elu+1, relu, FLatten's focused map), the
unnormalized "simple LA" form, and a depthwise-conv (LePE-style) branch on v (FLatten, Han et al. ICCV 2023),
which lives here in the mixer, outside the op. The op is :func:`vla_mm.ops.linear_attn.linear_attn`:
Triton kernels on CUDA, the PyTorch reference on CPU. Order-free: a scan route does not change it.
"""
import torch
import torch.nn as nn

from vla_mm.ops.linear_attn import linear_attn, linear_attn_qkv

from ...registry import MIXERS
from .base import BaseMixer, linear_factory


@MIXERS.register_module(name='linear_attn')
class LinearAttention(BaseMixer):
    """Multi-head non-causal linear attention, ``forward(x [B, N, C], ctx) -> [B, N, C]``.

    Args:
        dim (int): channels C of the tokens.
        num_heads (int): heads; the head size is C / num_heads.
        qkv_bias (bool): bias of the q/k/v projection.
        feature_map (str): 'identity' | 'elu1' | 'relu' | 'focused'.
        normalize (bool): normalized linear attention (True) or unnormalized "simple LA".
        focus_power (float): the power p of the focused map.
        lepe (bool): add a 3x3 depthwise convolution of v over the token grid (needs the full grid ``ctx.hw``).
        proj_drop (float): dropout after the output projection.
        linear_cfg (dict, optional): the projections' linear layer (e.g. ``dict(type='BitLinear')``).
    """

    directional = False

    def __init__(self, dim, num_heads=8, qkv_bias=True, feature_map='elu1', normalize=True, focus_power=3.0,
                 lepe=False, proj_drop=0.0, linear_cfg=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.num_heads = num_heads
        self.feature_map = feature_map
        self.normalize = normalize
        self.focus_power = focus_power
        Linear = linear_factory(linear_cfg)
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if lepe else None
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(self, x, ctx):
        B, N, C = x.shape
        # one projection, [B, N, 3, H, D]; the op reads q, k, v through their strides (no copy)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        opts = dict(feature_map=self.feature_map, normalize=self.normalize, focus_power=self.focus_power,
                    cu_seqlens=ctx.cu_seqlens)
        if self.lepe is None:  # the packed op: one [B, N, 3, H, D] gradient, no stack of dq, dk, dv
            return self.proj_drop(self.proj(linear_attn_qkv(qkv, **opts).reshape(B, N, C)))
        q, k, v = qkv.unbind(2)  # v feeds the LePE branch too: its gradient adds up before the one stack
        o = linear_attn(q, k, v, **opts).reshape(B, N, C)
        h, w = ctx.hw
        if ctx.ids_keep is not None or ctx.cu_seqlens is not None or h * w != N:
            kept = ' with kept-token ids (MAE)' if ctx.ids_keep is not None else ''
            raise ValueError(f'the LePE branch needs the full token grid (h * w == N = {N}), got hw = '
                             f'{tuple(ctx.hw)}{kept}')
        # the conv needs a dense input (one copy of v); channels-last, so its output's tokens view below and
        # the gradient coming back are contiguous (no second copy in the backward)
        v_map = v.reshape(B, h, w, C).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        o = o + self.lepe(v_map).flatten(2).transpose(1, 2)
        return self.proj_drop(self.proj(o))
