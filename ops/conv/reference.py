"""The short convolution in plain PyTorch: the ground truth for the kernels, and the CPU path.

    o_t = act(b + sum_i w_i x_{t-(W-1)+i})          (forward pass order)
    o_t = act(b + sum_i w_i x_{t+(W-1)-i})          (reverse: the forward pass of the flipped sequence)

x: [B, N, C], w: [C, W], b: [C]; a tap that would read before the start of its sequence (packed: of its own
sequence, ``cu_seqlens``) reads zero. Computes in float64 if any input is float64, else float32; returns x's dtype.
"""
import torch
import torch.nn.functional as F

from ..common.varlen import seq_positions


def short_conv_reference(x, weight, bias=None, activation=None, reverse=False, cu_seqlens=None):
    W = weight.shape[-1]
    dt = torch.float64 if any(t is not None and t.dtype == torch.float64 for t in (x, weight, bias)) \
        else torch.float32
    xf, w = x.to(dt), weight.to(dt)
    # window j of token t holds x_{t-(W-1)+j} (x_{t+j} under reverse, so tap i sits at j = W-1-i)
    win = F.pad(xf, [0, 0] + ([0, W - 1] if reverse else [W - 1, 0])).unfold(1, W, 1)  # [B, N, C, W], a view
    if reverse:
        w = w.flip(-1)
    if cu_seqlens is not None:  # a tap that would read the neighbouring sequence reads zero
        steps = torch.arange(W, device=x.device)
        keep = seq_positions(x.shape[1], cu_seqlens, reverse)[:, None] >= (steps if reverse else W - 1 - steps)
        w = w * keep[:, None, :].to(dt)
    o = (win * w).sum(-1)
    if bias is not None:
        o = o + bias.to(dt)
    return (F.silu(o) if activation == 'silu' else o).to(x.dtype)
