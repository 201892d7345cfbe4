"""LayerNorm / RMSNorm over the last dimension in plain PyTorch: the ground truth of ``kernel.py``.

    LayerNorm: y = (x - mean(x)) / sqrt(var(x) + eps) * w + b      (biased variance, as ``torch.nn.LayerNorm``)
    RMSNorm:   y = x / sqrt(mean(x^2) + eps) * w                    (as ``torch.nn.RMSNorm``)
    gated:     either, times gate * sigmoid(gate)                   (the output norm of GLA, RetNet, HGRN, ...)

Computes in float64 if x is float64, else in float32, and returns y in ``out_dtype``.
"""
import torch
import torch.nn.functional as F


def norm_reference(x, weight=None, bias=None, eps=1e-5, rms=False, out_dtype=None, gate=None):
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf, C = x.to(dt), (x.shape[-1],)
    w = weight.to(dt) if weight is not None else None
    if rms:
        y = F.rms_norm(xf, C, w, eps)
        y = y + bias.to(dt) if bias is not None else y
    else:
        y = F.layer_norm(xf, C, w, bias.to(dt) if bias is not None else None, eps)
    if gate is not None:
        y = y * F.silu(gate.to(dt))
    return y.to(out_dtype or x.dtype)
