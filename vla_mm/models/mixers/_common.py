"""Pieces several mixers share: the heads a route-split core holds, direction-aware token shift, short convolution,
rotary positions and running log-normaliser, the gated RMS norm of the output, a low-rank projection, HGRN's
forget-gate lower bound.

Directional cores run under a scan route, which may hand a core only some heads (a multi-head route gives head
groups different orders) and may run it right to left (``reverse=True``). So everything a core does per head
reads the heads it holds from a ``heads`` input, ``range(num_heads)`` in the mixer's forward, which a route
slices like a head dim (python ints: static under ``torch.compile``, no device read); and everything that looks
at neighbouring tokens (token shift, short convolution, rotary positions, running normalisers) looks in the
pass's own direction and stops at packed-sequence boundaries (``cu_seqlens``).

Heads are split and merged with ``unflatten`` / ``flatten``, not einops: under ``torch.compile`` Dynamo traces
einops' pattern parsing on every call (about a thousand bytecode steps per ``rearrange``).
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vla_mm.ops.common.varlen import seq_positions
from vla_mm.ops.conv import short_conv
from vla_mm.ops.norm import layer_norm

from ..layers.norm import fused_norm_ok

__all__ = ['qkv_widths',
           'head_slice', 'shift_tokens', 'ShortConv', 'GatedRMSNorm', 'low_rank', 'LowerBound', 'upcast', 'rotary',
           'running_lse', 'normalised_writes', 'FEATURE_MAPS']

#: feature maps on q and k the language-model layers offer (``None``: none)
FEATURE_MAPS = {None: None, 'identity': None, 'relu': F.relu, 'silu': F.silu, 'swish': F.silu,
                'elu1': lambda x: F.elu(x) + 1}


def qkv_widths(dim: int, expand_k: float, expand_v: float, num_heads: int):
    """Key and value widths ``(int(dim * expand_k), int(dim * expand_v))``, each divisible by ``num_heads``."""
    key_dim, value_dim = int(dim * expand_k), int(dim * expand_v)
    if key_dim % num_heads or value_dim % num_heads:
        raise ValueError(f'key / value widths ({key_dim}, {value_dim}) must be divisible by num_heads ({num_heads})')
    return key_dim, value_dim


def upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 for norms and gates, float64 left as it is (reference checks)."""
    return t if t.dtype == torch.float64 else t.float()


def head_slice(heads: Optional[range]) -> slice:
    """The slice of per-head parameters a core call holds, from its ``heads`` input (a ``range`` of head ids;
    None: all heads). Slicing with it is a view: no copy, no device read."""
    return slice(None) if heads is None else slice(heads.start, heads.stop)


def shift_tokens(x: torch.Tensor, j: int = 1, reverse: bool = False,
                 cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x [B, N, ...]`` -> the token ``j`` steps earlier in the pass (``x_{t-j}``; ``x_{t+j}`` when ``reverse``),
    zero where that step would leave the sequence (its start, or its end when ``reverse``)."""
    if j == 0:
        return x
    n = x.shape[1]
    pad = [0, 0] * (x.dim() - 2)
    if j >= n:
        return torch.zeros_like(x)
    out = F.pad(x[:, :n - j], pad + [j, 0]) if not reverse else F.pad(x[:, j:], pad + [0, j])
    if cu_seqlens is not None:
        keep = seq_positions(n, cu_seqlens, reverse) >= j
        out = out * keep.view(1, n, *([1] * (x.dim() - 2))).to(out.dtype)
    return out


def rotary(q: torch.Tensor, k: torch.Tensor, reverse: bool = False, base: float = 10000.0):
    """1-D rotary position embedding of ``q, k [B, N, H, D]`` (halves rotated, D even) at positions 0..N-1 along
    the pass (right to left when ``reverse``); only differences of positions reach ``q . k``."""
    n, d = q.shape[1], q.shape[-1]
    dt = torch.float64 if q.dtype == torch.float64 else torch.float32
    inv_freq = base ** -(torch.arange(0, d, 2, device=q.device, dtype=dt) / d)
    pos = torch.arange(n, device=q.device, dtype=dt)
    ang = ((-pos if reverse else pos)[:, None] * inv_freq)[None, :, None]
    cos, sin = torch.cos(ang).to(q.dtype), torch.sin(ang).to(q.dtype)

    def rotate(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return rotate(q), rotate(k)


def running_lse(s: torch.Tensor, reverse: bool = False, cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``z_t = log sum exp(s_i)`` over the pass so far (``i <= t``; ``i >= t`` when ``reverse``) along dim 1,
    restarting at each packed sequence of ``cu_seqlens``."""
    if cu_seqlens is None:
        # scanned along the last dim: torch's scan along an outer dim runs one thread per column, serially over the
        # tokens (2.07 ms a call at [16, 4096, 6, 64] fp32 on an H100, 39 % of lightnet's 1024 px step)
        t = s.movedim(1, -1)
        z = t.flip(-1).logcumsumexp(-1).flip(-1) if reverse else t.logcumsumexp(-1)
        return z.movedim(-1, 1)
    # packed: a log-depth scan (step d adds the partial sum d tokens back, within the sequence), so the lengths
    # are never read on the host
    n = s.shape[1]
    pos = seq_positions(n, cu_seqlens, reverse).view(1, n, *([1] * (s.dim() - 2)))
    z, d = s, 1
    while d < n:
        z = torch.where(pos >= d, torch.logaddexp(z, shift_tokens(z, d, reverse)), z)
        d *= 2
    return z


def normalised_writes(s: torch.Tensor, reverse: bool = False, cu_seqlens: Optional[torch.Tensor] = None):
    """A running softmax over the pass as gated writes (ABC's slot control, LightNet's keys): with ``z`` the
    running log-normaliser of ``s``, the write weights ``exp(s_t - z_t)`` and the log forget gates
    ``z_{t-1} - z_t`` (0 at a sequence's first token: nothing to forget)."""
    z = running_lse(s, reverse, cu_seqlens)
    has_prev = shift_tokens(z.new_ones(1, z.shape[1], *([1] * (z.dim() - 2))), 1, reverse, cu_seqlens)
    return (s - z).exp(), (shift_tokens(z, 1, reverse, cu_seqlens) - z) * has_prev


class ShortConv(nn.Module):
    """Depthwise causal convolution along the 1-D order (the "short convolution" of the GLA / HGRN / DeltaNet
    language-model layers), run in the pass's own direction: ``o_t = sum_i w_i x_{t-(W-1)+i}`` forward,
    ``x_{t+(W-1)-i}`` under ``reverse``, so a reversed pass equals the forward pass of the flipped sequence.

    ``forward(x [B, N, Hs, d], heads, reverse, cu_seqlens)``: channels are laid out ``(head, d)``; ``heads`` (a
    ``range`` of head ids, None: all) picks the weight rows of the heads the call holds.
    """

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = False, activation: Optional[str] = 'silu'):
        super().__init__()
        if activation not in (None, 'silu'):
            raise ValueError(f"activation must be None or 'silu', got {activation!r}")
        self.kernel_size = kernel_size
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        nn.init.uniform_(self.weight, -1 / math.sqrt(kernel_size), 1 / math.sqrt(kernel_size))  # nn.Conv1d's range

    def forward(self, x, heads=None, reverse=False, cu_seqlens=None):
        d = x.shape[-1]
        w = self.weight.view(-1, d, self.kernel_size)[head_slice(heads)].flatten(0, 1)
        b = self.bias.view(-1, d)[head_slice(heads)].flatten() if self.bias is not None else None
        # summed in fp32, handed on in x's dtype (bf16 under autocast: what the next op's matmuls take)
        y = short_conv(x.flatten(2), w, b, activation=self.activation, reverse=reverse, cu_seqlens=cu_seqlens)
        return y.view(x.shape)

    def extra_repr(self):
        return f'{self.weight.shape[0]}, kernel_size={self.kernel_size}, activation={self.activation}'


class GatedRMSNorm(nn.Module):
    """RMSNorm over the last dimension, in float32, optionally times ``swish(gate)`` (flash-linear-attention's
    ``FusedRMSNormGated`` / ``RMSNorm``: the output norm and gate of GLA, RetNet, HGRN, HGRN2, lightnet). Eager
    CUDA calls take one fused pass (:func:`vla_mm.ops.norm.layer_norm` with ``gate``), the rest torch's ops."""

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x, gate=None):
        if (gate is None or gate.shape == x.shape) and fused_norm_ok(x, gate):
            return layer_norm(x, self.weight, None, self.eps, rms=True, gate=gate)
        w = upcast(self.weight) if self.weight is not None else None
        y = F.rms_norm(upcast(x), (x.shape[-1],), w, self.eps)
        if gate is not None:
            y = y * F.silu(upcast(gate))
        return y.to(x.dtype)


def low_rank(Linear, in_features: int, rank: int, out_features: int, bias: bool = True) -> nn.Sequential:
    """``in -> rank -> out`` projection (GLA's gate, lightnet's output gate): two linear layers, no activation."""
    return nn.Sequential(Linear(in_features, rank, bias=False), Linear(rank, out_features, bias=bias))


class LowerBound(nn.Module):
    """HGRN's forget-gate lower bound ``f' = gamma + (1 - gamma) f`` in log space, one learned ``gamma`` per
    channel in (0, 1), started at ``layer_idx / num_layers``: the published value at initialisation
    (``cumsum(softmax(0)) - first``), but a parameter of this layer, not tied by a softmax across layers (the
    mixer contract has no cross-layer parameters), so the bound is not forced to rise with depth."""

    def __init__(self, channels: int, layer_idx: int, num_layers: int):
        super().__init__()
        if not 0 < layer_idx < num_layers:
            raise ValueError(f'the lower bound needs 0 < layer_idx < num_layers, got {layer_idx}, {num_layers}')
        self.logit = nn.Parameter(torch.full((channels,), math.log(layer_idx / (num_layers - layer_idx))))

    def forward(self, log_f, heads=None):
        """``log_f [B, N, Hs, d]`` log forget gates of the heads ``heads`` (a ``range``; None: all) ->
        ``log(gamma + (1 - gamma) exp(log_f))``."""
        lg = self.logit.unflatten(0, (-1, log_f.shape[-1]))[head_slice(heads)]
        return torch.logaddexp(F.logsigmoid(lg), F.logsigmoid(-lg) + log_f)
