"""Non-causal (bidirectional) linear attention token mixer.

Katharopoulos et al., "Transformers are RNNs" (ICML 2020): o_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / (φ(q_i)ᵀ Σ_j φ(k_j)).
Options cover the variants the field uses: the feature map φ (identity, elu+1, relu, FLatten's focused map), the
unnormalized "simple LA" form, and a depthwise-conv (LePE-style) branch on v (FLatten, Han et al. ICCV 2023),
which lives here in the mixer, outside the op. The op is :func:`vla_mm.ops.linear_attn.linear_attn`:
Triton kernels on CUDA, the PyTorch reference on CPU.
"""
import torch.nn as nn

from vla_mm.ops.linear_attn import linear_attn

from ...registry import MIXERS


@MIXERS.register_module(name='linear_attn')
class LinearAttention(nn.Module):
    """Multi-head non-causal linear attention.

    Args:
        dim (int): channels C of the tokens.
        num_heads (int): heads; the head size is C / num_heads.
        qkv_bias (bool): bias of the q/k/v projection.
        feature_map (str): 'identity' | 'elu1' | 'relu' | 'focused'.
        normalize (bool): normalized linear attention (True) or unnormalized "simple LA".
        focus_power (float): the power p of the focused map.
        lepe (bool): add a 3x3 depthwise convolution of v over the token grid (needs ``hw``).
        proj_drop (float): dropout after the output projection.
    """

    def __init__(self, dim, num_heads=8, qkv_bias=True, feature_map='elu1', normalize=True, focus_power=3.0,
                 lepe=False, proj_drop=0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.num_heads = num_heads
        self.feature_map = feature_map
        self.normalize = normalize
        self.focus_power = focus_power
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if lepe else None
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, hw=None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)
        o = linear_attn(q, k, v, feature_map=self.feature_map, normalize=self.normalize,
                        focus_power=self.focus_power).reshape(B, N, C)
        if self.lepe is not None:
            if hw is None or hw[0] * hw[1] != N:
                raise ValueError(f'the LePE branch needs the token grid hw with h*w == N ({N}), got {hw}')
            o = o + self.lepe(v.reshape(B, hw[0], hw[1], C).permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)
        return self.proj_drop(self.proj(o))
