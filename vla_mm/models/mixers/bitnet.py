"""BitNet attention token mixer: softmax attention whose q/k/v/o projections are ternary BitLinear layers.

Wang et al., "BitNet: Scaling 1-bit Transformers for Large Language Models" (arXiv 2310.11453) and Ma et al.,
"The Era of 1-bit LLMs" (BitNet b1.58, arXiv 2402.17764); the layer follows flash-linear-attention's
``BitAttention`` (four bias-free BitLinear projections, each with its input RMSNorm). Vision adaptation: non-causal
attention over the image, position from the backbone's embedding or optional 2-D axial RoPE (not 1-D RoPE).
"""
from ...registry import MIXERS
from .transformer import SoftmaxAttention


@MIXERS.register_module(name='bitnet')
class BitAttention(SoftmaxAttention):
    """:class:`SoftmaxAttention` with ``linear_cfg=dict(type='BitLinear')`` by default (same options)."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, proj_bias=False, qk_norm=False, rope=False,
                 rope_theta=10000.0, attn_drop=0.0, norm_eps=1e-5, linear_cfg=None):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm,
                         rope=rope, rope_theta=rope_theta, attn_drop=attn_drop, norm_eps=norm_eps,
                         linear_cfg=dict(type='BitLinear') if linear_cfg is None else linear_cfg)
