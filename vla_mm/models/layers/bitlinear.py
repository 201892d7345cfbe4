"""BitLinear: the ternary-weight linear layer of BitNet b1.58.

Ma et al., "The Era of 1-bit LLMs: All Large Language Models are in 1.58 Bits" (arXiv 2402.17764), after Wang et
al., "BitNet" (arXiv 2310.11453). Training-time fake quantisation: the forward uses weights in {-1, 0, +1} times
one absmean scale per matrix and 8-bit absmax activations per token (after an RMSNorm of the input, as
flash-linear-attention's BitLinear); the backward treats both quantisers as the identity (straight-through
estimator). Any mixer builds its projections with it through ``linear_cfg=dict(type='BitLinear')``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...registry import MODELS

__all__ = ['BitLinear', 'weight_quant_ternary', 'activation_quant_int8']


def weight_quant_ternary(w, eps=1e-5):
    """``(t, scale)``: ``t = clamp(round(w / scale), -1, 1)`` with ``scale = mean|w|`` (one per matrix)."""
    scale = w.abs().mean().clamp_min(eps)
    return (w / scale).round().clamp(-1, 1), scale


def activation_quant_int8(x, eps=1e-5):
    """Per-token absmax 8-bit fake quantisation along the last dim: ``round(x * 127 / max|x|)`` in [-128, 127]."""
    scale = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp_min(eps)
    return (x * scale).round().clamp(-128, 127) / scale


@MODELS.register_module()
class BitLinear(nn.Linear):
    """``nn.Linear`` with ternary weights and 8-bit activations in the forward, float gradients in the backward.

    Args:
        in_features, out_features, bias: as ``nn.Linear`` (the bias is kept in full precision).
        norm (bool): RMSNorm the input before quantising it (BitNet's SubLN, as fla's BitLinear).
        norm_eps (float): the RMSNorm epsilon.
    """

    def __init__(self, in_features, out_features, bias=True, norm=True, norm_eps=1e-8):
        super().__init__(in_features, out_features, bias=bias)
        self.norm = nn.RMSNorm(in_features, eps=norm_eps) if norm else None

    def quantized_weight(self):
        """The forward weight, ``ternary * scale`` (float32 quantisation, in the weight's dtype)."""
        w = self.weight
        t, scale = weight_quant_ternary(w.to(torch.promote_types(w.dtype, torch.float32)))
        return (t * scale).to(w.dtype)

    def forward(self, x):
        dt = torch.promote_types(x.dtype, torch.float32)  # norm and quantisers in fp32 at least (bf16 under AMP)
        if self.norm is not None:
            x = F.rms_norm(x.to(dt), self.norm.normalized_shape, self.norm.weight.to(dt), self.norm.eps).to(x.dtype)
        # straight-through: the forward sees the quantised values, the backward the identity
        xq = x + (activation_quant_int8(x.to(dt)).to(x.dtype) - x).detach()
        w = self.weight
        wq = w + (self.quantized_weight() - w).detach()
        return F.linear(xq, wq, self.bias)

    def extra_repr(self):
        return f'{super().extra_repr()}, norm={self.norm is not None}'
