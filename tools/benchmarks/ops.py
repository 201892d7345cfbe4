"""Op benchmark: every public op of ``vla_mm.ops`` beside its peers, driven by op specs, in one process.

    source tools/device_prelude.sh --peers && python3 tools/benchmarks/ops.py --out $OUT [--ops all]
        [--N 1024,4096,16384] [--B 8 --H 12 --K 64 --V 64] [--modes fwd,fwdbwd] [--check] [--host] [--graph]
        [--profile gla_vector@4096] [--peers fla,sdpa,mamba,vrwkv,torch,cudnn,cublas] [--deadline 540]
    python tools/benchmarks/ops.py --smoke --out /tmp/ops_smoke        # CPU, tiny shapes (CI)

For each op spec (``SPECS``: how to make inputs at B, H, N, K, V, dtype; our call; the float64 reference; the
peers) and each N: median time (``common.bench``) of the forward (no grad) and of forward + backward of the
autograd call as a user makes it, for ours and for each peer that is installed (flash-linear-attention 0.6.0,
``F.scaled_dot_product_attention``, mamba's ``selective_scan_cuda``, Vision-RWKV's ``bi_wkv``), beside the HBM
floor: the bytes of every input and output of the pass (forward: inputs + output; backward: inputs + output
gradient read, input gradients written), each moved once, divided by the device-to-device copy bandwidth
measured in the same run. ``--check``: forward and every input gradient against the float64 reference at a
small shape (outputs NaN-filled first where the kernels support it). ``--host``: host microseconds per call at
a tiny shape (launch cost). ``--graph``: also the CUDA-graph replay time. ``--profile OP@N``: kernel table.
Writes log.txt, results.json (after every case), ops.md, ops.png (time vs N per op), profile.md under --out.
"""
import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import os.path as osp
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402


# ----------------------------------------------------------------------------------------------- specs
@dataclass
class Peer:
    """Another implementation of an op: ``prepare`` turns our inputs into its own (its layout, fresh leaves),
    ``call`` runs it and returns the output tensor. ``module``: what must be importable (else skipped)."""
    call: Callable
    prepare: Callable = None
    module: Optional[str] = None
    cuda_only: bool = True
    note: str = ''


@dataclass
class OpSpec:
    """One op: ``make(B, H, N, K, V, dtype, device)`` -> dict of inputs (tensors or None, our [B, N, H, D]
    layout); ``ours(inputs)`` -> output (None: the family's op is not in the tree yet, peers only);
    ``reference(inputs in float64)`` -> output; ``grads``: inputs that receive a gradient; ``nbytes``: optional
    (fwd, fwd+bwd) byte count override of the generic floor."""
    name: str
    make: Callable
    ours: Optional[Callable]
    reference: Optional[Callable] = None
    grads: Tuple[str, ...] = ('q', 'k', 'v')
    peers: Dict[str, Peer] = field(default_factory=dict)
    causal: bool = True
    note: str = ''
    nbytes: Optional[Callable] = None
    base: Optional[str] = None  # the plain op this spec is an option of (reported as a ratio to it)


def _randn(*shape, dtype, device, scale=1.0):
    return (torch.randn(*shape, device=device) * scale).to(dtype)


def _qkv(B, H, N, K, V, dtype, device, k_unit=False):
    q = _randn(B, N, H, K, dtype=dtype, device=device)
    k = torch.randn(B, N, H, K, device=device)
    k = (F.normalize(k, dim=-1) if k_unit else k).to(dtype)
    return dict(q=q, k=k, v=_randn(B, N, H, V, dtype=dtype, device=device))


def _sdpa(causal):
    def prepare(x):
        return {n: x[n].detach().transpose(1, 2).contiguous() for n in ('q', 'k', 'v')}
    return Peer(lambda p: F.scaled_dot_product_attention(p['q'], p['k'], p['v'], is_causal=causal),
                prepare, cuda_only=False, note='causal' if causal else 'non-causal')


def _fla(module, fn, call, note=''):
    """A flash-linear-attention op, imported only when the peer wheels are installed."""
    def run(p):
        f = getattr(importlib.import_module(module), fn)
        out = call(f, p)
        return out[0] if isinstance(out, tuple) else out
    return Peer(run, module=module, note=note or f'{module}.{fn}')


def _ours(module, fn):
    """Our public op ``vla_mm.ops.<module>.<fn>``, looked up at call time (None when the family is missing)."""
    try:
        mod = importlib.import_module(f'vla_mm.ops.{module}')
    except ImportError:
        return None
    return getattr(mod, fn, None)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def make_linear_attn(B, H, N, K, V, dtype, device):
    return _qkv(B, H, N, K, V, dtype, device)


def make_linear_attn_option(option):
    """Inputs of one linear-attention option: RoPE tables [N, K/2], a padding mask (70% valid), or B packed
    sequences of N tokens (q [1, B N, H, K] + cu_seqlens)."""
    def make(B, H, N, K, V, dtype, device):
        if option == 'varlen':
            x = _qkv(1, H, B * N, K, V, dtype, device)
            x['cu_seqlens'] = torch.arange(0, B * N + 1, N, dtype=torch.int32, device=device)
            return x
        x = _qkv(B, H, N, K, V, dtype, device)
        if option == 'rope':
            ang = torch.rand(N, K // 2, device=device) * 6.3
            x['rope_cos'], x['rope_sin'] = ang.cos(), ang.sin()
        elif option == 'mask':
            x['mask'] = torch.rand(B, N, device=device) < 0.7
            x['mask'][:, 0] = True
        return x
    return make


def linear_attn_kwargs(x):
    """The op's keyword arguments carried in an input dict (see make_linear_attn_option)."""
    kw = {}
    if x.get('rope_cos') is not None:
        kw['rope'] = (x['rope_cos'], x['rope_sin'])
    if x.get('mask') is not None:
        kw['key_padding_mask'] = x['mask']
    if x.get('cu_seqlens') is not None:
        kw['cu_seqlens'] = x['cu_seqlens']
    return kw


def make_gla(gate, u=False):
    def make(B, H, N, K, V, dtype, device):
        x = _qkv(B, H, N, K, V, dtype, device)
        if gate == 'vector':
            x['g'] = F.logsigmoid(torch.randn(B, N, H, K, device=device) + 2.0).to(dtype)
        elif gate == 'scalar':
            x['g'] = F.logsigmoid(torch.randn(B, N, H, device=device) + 2.0).to(dtype)
        if u:  # RWKV6: scale 1, so r and k are scaled to keep r.k near 1
            x['q'], x['k'] = (t * K ** -0.25 for t in (x['q'], x['k']))
            x['u'] = _randn(H, K, dtype=dtype, device=device)
        return x
    return make


def make_delta(gated):
    def make(B, H, N, K, V, dtype, device):
        x = _qkv(B, H, N, K, V, dtype, device, k_unit=True)
        x['beta'] = (torch.rand(B, N, H, device=device) * 0.9 + 0.05).to(dtype)
        if gated:
            x['g'] = (-F.softplus(torch.randn(B, N, H, device=device))).to(dtype)
        return x
    return make


def make_hgrn(B, H, N, K, V, dtype, device):
    D = H * K
    return dict(x=_randn(B, N, D, dtype=dtype, device=device),
                g=F.logsigmoid(torch.randn(B, N, D, device=device) + 2.0).to(dtype))


GSA_SLOTS = [64]


def make_gsa(B, H, N, K, V, dtype, device):
    M = GSA_SLOTS[0]
    x = _qkv(B, H, N, K, V, dtype, device)
    x['s'] = torch.randn(B, N, H, M, device=device).softmax(-1).to(dtype)
    x['g'] = F.logsigmoid(torch.randn(B, N, H, M, device=device) + 3.0).to(dtype)
    return x


def make_layer_norm(B, H, N, K, V, dtype, device):
    """The residual stream of a ViT under autocast: x [B, N, C = H * K] fp32, fp32 weight and bias; ``dtype`` is
    the output's (the autocast dtype)."""
    C = H * K
    return dict(x=torch.randn(B, N, C, device=device), w=torch.randn(C, device=device),
                b=torch.randn(C, device=device), out_dtype=dtype)


def _torch_layer_norm():
    """What autocast runs: ``F.layer_norm`` in fp32, then the cast the next matmul makes."""
    def prepare(x):
        return {n: (x[n].detach().clone().requires_grad_() if n in ('x', 'w', 'b') else x[n]) for n in x}
    return Peer(lambda p: F.layer_norm(p['x'], p['x'].shape[-1:], p['w'], p['b'], 1e-6).to(p['out_dtype']),
                prepare, cuda_only=False, note='F.layer_norm (fp32) + cast to the output dtype')


def make_add_layer_norm(B, H, N, K, V, dtype, device):
    """A block's second norm under autocast: the mixer branch x in the run dtype, the fp32 stream r (C = H * K)."""
    C = H * K
    return dict(x=_randn(B, N, C, dtype=dtype, device=device), r=torch.randn(B, N, C, device=device),
                w=torch.randn(C, device=device), b=torch.randn(C, device=device), out_dtype=dtype)


def _torch_add_layer_norm():
    """What a block with torch's norm runs: the add (fp32), F.layer_norm in fp32, the next matmul's cast."""
    def prepare(x):
        return {n: (x[n].detach().clone().requires_grad_() if n in ('x', 'r', 'w', 'b') else x[n]) for n in x}
    return Peer(lambda p: F.layer_norm(p['r'] + p['x'], p['x'].shape[-1:], p['w'], p['b'], 1e-6).to(p['out_dtype']),
                prepare, cuda_only=False, note='x + r, F.layer_norm (fp32) + cast to the output dtype')


def _fresh_leaves(x):
    """A peer's inputs: our inputs as new gradient leaves (every input of these ops takes a gradient)."""
    return {n: x[n].detach().clone().requires_grad_() for n in x}


def make_gated_rms_norm(B, H, N, K, V, dtype, device):
    """A mixer's output norm: o and the gate [B, N, H, V] in the run dtype, an fp32 weight [V] (RMSNorm per head)."""
    return dict(x=_randn(B, N, H, V, dtype=dtype, device=device), gate=_randn(B, N, H, V, dtype=dtype, device=device),
                w=torch.randn(V, device=device))


def _torch_gated_rms_norm():
    """What the mixers ran before the fused op: RMSNorm in fp32 times swish(gate), cast back."""
    return Peer(lambda p: (F.rms_norm(p['x'].float(), p['x'].shape[-1:], p['w'], 1e-5) * F.silu(p['gate'].float()))
                .to(p['x'].dtype), _fresh_leaves, cuda_only=False, note='F.rms_norm (fp32) * silu(gate), cast back')


def make_sum_rows(B, H, N, K, V, dtype, device):
    """A linear layer's output gradient: [B N, C = H * K] in the run dtype (the bias gradient sums its rows)."""
    return dict(x=_randn(B * N, H * K, dtype=dtype, device=device))


def _torch_sum_rows(kind):
    """What autograd runs for a linear layer's bias gradient (``sum(0)`` in the gradient's dtype), or the same
    sum as a matrix product with a ones row (cuBLAS)."""
    def call(p):
        if kind == 'sum':
            return p['x'].sum(0)
        return (p['x'].new_ones(1, p['x'].shape[0]) @ p['x'])[0]
    return Peer(call, _fresh_leaves, cuda_only=False,
                note='x.sum(0) in x\'s dtype (AddmmBackward\'s bias gradient)' if kind == 'sum' else
                'ones[1, M] @ x (cuBLAS)')


def make_short_conv(B, H, N, K, V, dtype, device, W=4):
    """A mixer's short convolution of its keys: x [B, N, C = H * K] in the run dtype, fp32 weight [C, W] and bias."""
    C = H * K
    return dict(x=_randn(B, N, C, dtype=dtype, device=device), w=torch.randn(C, W, device=device) / W ** 0.5,
                b=torch.randn(C, device=device))


def make_short_conv_packed(B, H, N, K, V, dtype, device):
    """The B sequences packed into one (x [1, B N, C] + cu_seqlens), 3 taps, run right to left: the packed,
    reversed and non-power-of-two paths of the kernels, at the cost of the plain call's data."""
    x = make_short_conv(B, H, N, K, V, dtype, device, W=3)
    x['x'] = x['x'].reshape(1, B * N, -1)
    x['cu_seqlens'] = torch.arange(0, B * N + 1, N, dtype=torch.int32, device=device)
    return x


def _torch_short_conv(kind):
    """What the mixers ran before the op ('window': the window view times the weight, summed over taps in fp32)
    or torch's depthwise conv1d (cuDNN) over the transposed tokens; both + bias, SiLU, cast to x's dtype."""
    def window(p):
        W = p['w'].shape[-1]
        o = (F.pad(p['x'], [0, 0, W - 1, 0]).unfold(1, W, 1) * p['w']).sum(-1) + p['b']
        return F.silu(o).to(p['x'].dtype)

    def conv1d(p):
        W, N = p['w'].shape[-1], p['x'].shape[1]
        xt = p['x'].transpose(1, 2)
        o = F.conv1d(xt, p['w'].to(xt.dtype)[:, None], p['b'].to(xt.dtype), padding=W - 1, groups=xt.shape[1])
        return F.silu(o[..., :N]).transpose(1, 2)
    return Peer(window if kind == 'window' else conv1d, _fresh_leaves, cuda_only=False,
                note='window view * weight, summed in fp32 (the mixers before the op)' if kind == 'window' else
                'F.conv1d depthwise on [B, C, N] in x\'s dtype (cuDNN)')


def make_selective_scan(B, H, N, K, V, dtype, device, state=16):
    """mamba's layout: u, delta [B, D, L] with D = H * K channels, A [D, state], B, C [B, state, L]."""
    D = H * K
    return dict(u=_randn(B, D, N, dtype=dtype, device=device), delta=_randn(B, D, N, dtype=dtype, device=device),
                A=-torch.rand(D, state, device=device).add(0.5), B=_randn(B, state, N, dtype=dtype, device=device),
                C=_randn(B, state, N, dtype=dtype, device=device), D=torch.ones(D, device=device),
                delta_bias=torch.zeros(D, device=device).uniform_(-4, -2))


def make_bi_wkv(B, H, N, K, V, dtype, device):
    """Vision-RWKV's layout: k, v [B, T, C] fp32 with C = H * K; w (already -exp(w) / T) and u / T over C."""
    C = H * K
    return dict(w=-torch.rand(C, device=device).exp() / N, u=torch.randn(C, device=device) / N,
                k=torch.randn(B, N, C, device=device), v=torch.randn(B, N, C, device=device))


class _SelectiveScan(torch.autograd.Function):
    """mamba's selective_scan_cuda.fwd / bwd as a differentiable call (delta_softplus=True, no z)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias):
        import selective_scan_cuda
        out, x, *_ = selective_scan_cuda.fwd(u, delta, A, B, C, D, None, delta_bias, True)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x)
        return out

    @staticmethod
    def backward(ctx, dout):
        import selective_scan_cuda
        u, delta, A, B, C, D, delta_bias, x = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *_ = selective_scan_cuda.bwd(
            u, delta, A, B, C, D, None, delta_bias, dout.contiguous(), x, None, None, True, False)
        return du, ddelta, dA, dB, dC, dD, ddelta_bias


class _BiWKV(torch.autograd.Function):
    """Vision-RWKV's bi_wkv_forward / bi_wkv_backward as a differentiable call (fp32)."""

    @staticmethod
    def forward(ctx, w, u, k, v):
        import bi_wkv
        ctx.save_for_backward(w, u, k, v)
        return bi_wkv.bi_wkv_forward(w, u, k, v)

    @staticmethod
    def backward(ctx, gy):
        import bi_wkv
        w, u, k, v = ctx.saved_tensors
        gw, gu, gk, gv = bi_wkv.bi_wkv_backward(w, u, k, v, gy.contiguous())
        return gw, gu, gk, gv


def _specs():
    from vla_mm.ops.conv import short_conv, short_conv_reference
    from vla_mm.ops.delta_rule import delta_rule, delta_rule_recurrent
    from vla_mm.ops.gla import chunk_gla, chunk_retention, chunk_rwkv6, gla_recurrent_reference, retention_log_decay
    from vla_mm.ops.gsa import gsa, gsa_recurrent_reference
    from vla_mm.ops.hgrn import hgrn, hgrn_recurrent_reference
    from vla_mm.ops.linear_attn import linear_attn, linear_attn_reference
    from vla_mm.ops.norm import add_layer_norm, layer_norm, norm_reference
    from vla_mm.ops.reduce import sum_rows, sum_rows_reference

    def gla_ref(x):
        return gla_recurrent_reference(x['q'], x['k'], x['v'], gk=x.get('g'), u=x.get('u'),
                                       scale=1.0 if 'u' in x else None)[0]

    fla_gla_vector = _fla('fla.ops.gla', 'chunk_gla', lambda f, p: f(p['q'], p['k'], p['v'], p['g']))
    specs = [
        OpSpec('linear_attn', make_linear_attn, lambda x: linear_attn(x['q'], x['k'], x['v']),
               lambda x: linear_attn_reference(x['q'], x['k'], x['v']), causal=False,
               note='non-causal, elu+1, normalized',
               peers=dict(sdpa=_sdpa(False),
                          fla=_fla('fla.ops.linear_attn', 'chunk_linear_attn',
                                   lambda f, p: f(p['q'], p['k'], p['v'], normalize=False),
                                   note='fla chunk_linear_attn: causal, unnormalized (scale reference only)'))),
    ]
    for option, kw in (('focused', dict(feature_map='focused')), ('linfusion', dict(norm='linfusion')),
                       ('rope', {}), ('mask', {}), ('varlen', {})):
        make = make_linear_attn if kw else make_linear_attn_option(option)
        specs.append(OpSpec(
            f'linear_attn_{option}', make,
            lambda x, kw=kw: linear_attn(x['q'], x['k'], x['v'], **kw, **linear_attn_kwargs(x)),
            lambda x, kw=kw: linear_attn_reference(x['q'], x['k'], x['v'], **kw, **linear_attn_kwargs(x)),
            causal=False, base='linear_attn',
            note=f'linear_attn with {option}' + (' (B packed sequences of N tokens)' if option == 'varlen' else '')))
    specs += [
        OpSpec('gla_vector', make_gla('vector'), lambda x: chunk_gla(x['q'], x['k'], x['v'], x['g'])[0], gla_ref,
               grads=('q', 'k', 'v', 'g'), note='GLA, gates [B, N, H, K]',
               peers=dict(fla=fla_gla_vector, sdpa=_sdpa(True))),
        OpSpec('gla_scalar', make_gla('scalar'), lambda x: chunk_gla(x['q'], x['k'], x['v'], x['g'])[0], gla_ref,
               grads=('q', 'k', 'v', 'g'), note='simple GLA / Mamba2-style, gates [B, N, H]',
               peers=dict(fla=_fla('fla.ops.simple_gla', 'chunk_simple_gla',
                                   lambda f, p: f(p['q'], p['k'], p['v'], g=p['g'])), sdpa=_sdpa(True))),
        OpSpec('gla_none', make_gla('none'), lambda x: chunk_gla(x['q'], x['k'], x['v'])[0], gla_ref,
               note='causal linear attention (no gate)',
               peers=dict(fla=_fla('fla.ops.linear_attn', 'chunk_linear_attn',
                                   lambda f, p: f(p['q'], p['k'], p['v'], normalize=False)), sdpa=_sdpa(True))),
        OpSpec('retention', make_gla('none'), lambda x: chunk_retention(x['q'], x['k'], x['v'])[0],
               lambda x: gla_recurrent_reference(
                   x['q'], x['k'], x['v'],
                   gk=retention_log_decay(x['q'].shape[2], x['q'].device, x['q'].dtype).expand(x['q'].shape[:3]))[0],
               note='RetNet: fixed decay per head',
               peers=dict(fla=_fla('fla.ops.retention', 'chunk_retention', lambda f, p: f(p['q'], p['k'], p['v'])))),
        OpSpec('rwkv6', make_gla('vector', u=True),
               lambda x: chunk_rwkv6(x['q'], x['k'], x['v'], x['g'], x['u'])[0], gla_ref,
               grads=('q', 'k', 'v', 'g', 'u'), note='RWKV6: vector decay + bonus u, scale 1',
               peers=dict(fla=_fla('fla.ops.rwkv6', 'chunk_rwkv6',
                                   lambda f, p: f(p['q'], p['k'], p['v'], p['g'], p['u'], scale=1.0)))),
        OpSpec('delta_rule', make_delta(False),
               lambda x: delta_rule(x['q'], x['k'], x['v'], x['beta'])[0],
               lambda x: delta_rule_recurrent(x['q'], x['k'], x['v'], x['beta'])[0],
               grads=('q', 'k', 'v', 'beta'), note='DeltaNet',
               peers=dict(fla=_fla('fla.ops.delta_rule', 'chunk_delta_rule',
                                   lambda f, p: f(p['q'], p['k'], p['v'], p['beta'])), sdpa=_sdpa(True))),
        OpSpec('gated_delta_rule', make_delta(True),
               lambda x: delta_rule(x['q'], x['k'], x['v'], x['beta'], x['g'])[0],
               lambda x: delta_rule_recurrent(x['q'], x['k'], x['v'], x['beta'], x['g'])[0],
               grads=('q', 'k', 'v', 'beta', 'g'), note='Gated DeltaNet',
               peers=dict(fla=_fla('fla.ops.gated_delta_rule', 'chunk_gated_delta_rule',
                                   lambda f, p: f(p['q'], p['k'], p['v'], p['g'], p['beta'])))),
        OpSpec('hgrn', make_hgrn, lambda x: hgrn(x['x'], x['g'], gated_input=False)[0],
               lambda x: hgrn_recurrent_reference(x['x'], x['g'], gated_input=False)[0], grads=('x', 'g'),
               note='HGRN, D = H * K channels, ungated input (fla\'s form)',
               peers=dict(fla=_fla('fla.ops.hgrn', 'chunk_hgrn', lambda f, p: f(p['x'], p['g'])))),
        OpSpec('gsa', make_gsa, lambda x: gsa(x['q'], x['k'], x['v'], x['s'], x['g'])[0],
               lambda x: gsa_recurrent_reference(x['q'], x['k'], x['v'], x['s'], x['g'])[0],
               grads=('q', 'k', 'v', 's', 'g'), note=f'gated slot attention, M = {GSA_SLOTS[0]} slots',
               peers=dict(fla=_fla('fla.ops.gsa', 'chunk_gsa',
                                   lambda f, p: f(p['q'], p['k'], p['v'], p['s'], p['g'])))),
        OpSpec('layer_norm', make_layer_norm,
               lambda x: layer_norm(x['x'], x['w'], x['b'], 1e-6, out_dtype=x['out_dtype']),
               lambda x: norm_reference(x['x'], x['w'], x['b'], 1e-6, out_dtype=torch.float64),
               grads=('x', 'w', 'b'), causal=False,
               note='LayerNorm over C = H * K of fp32 x, output in the run dtype (a ViT block under autocast)',
               peers=dict(torch=_torch_layer_norm())),
        OpSpec('add_layer_norm', make_add_layer_norm,
               lambda x: add_layer_norm(x['x'], x['r'], x['w'], x['b'], 1e-6, out_dtype=x['out_dtype'])[0],
               lambda x: norm_reference(x['r'] + x['x'], x['w'], x['b'], 1e-6, out_dtype=torch.float64),
               grads=('x', 'r', 'w', 'b'), causal=False,
               note='residual add + LayerNorm (x in the run dtype + fp32 stream r; y timed, s kept), as a block',
               peers=dict(torch=_torch_add_layer_norm())),
        OpSpec('gated_rms_norm', make_gated_rms_norm,
               lambda x: layer_norm(x['x'], x['w'], None, 1e-5, rms=True, gate=x['gate']),
               lambda x: norm_reference(x['x'], x['w'], None, 1e-5, True, torch.float64, x['gate']),
               grads=('x', 'gate', 'w'), causal=False,
               note='per-head RMSNorm times swish(gate) over V (the output norm of GLA, RetNet, HGRN, ...)',
               peers=dict(torch=_torch_gated_rms_norm())),
        OpSpec('short_conv', make_short_conv,
               lambda x: short_conv(x['x'], x['w'], x['b'], activation='silu'),
               lambda x: short_conv_reference(x['x'], x['w'], x['b'], 'silu'), grads=('x', 'w', 'b'),
               note='short convolution, 4 taps + bias + SiLU over C = H * K channels (the mixers\' q / k / v conv)',
               peers=dict(torch=_torch_short_conv('window'), cudnn=_torch_short_conv('conv1d'),
                          fla=_fla('fla.modules.causal_conv1d', 'causal_conv1d',
                                   lambda f, p: f(p['x'], p['w'], p['b'], activation='silu')))),
        OpSpec('sum_rows', make_sum_rows, lambda x: sum_rows(x['x']), lambda x: sum_rows_reference(x['x']),
               grads=('x',), causal=False,
               note='rows summed (a linear layer\'s bias gradient), [B N, C = H * K]: the forward is what counts',
               peers=dict(torch=_torch_sum_rows('sum'), cublas=_torch_sum_rows('mm'))),
        OpSpec('short_conv_packed', make_short_conv_packed,
               lambda x: short_conv(x['x'], x['w'], x['b'], activation='silu', reverse=True,
                                    cu_seqlens=x['cu_seqlens']),
               lambda x: short_conv_reference(x['x'], x['w'], x['b'], 'silu', True, x['cu_seqlens']),
               grads=('x', 'w', 'b'), base='short_conv',
               note='short_conv with the B sequences packed (cu_seqlens), reversed, 3 taps'),
        # later families: the peers are timed now; ours joins when vla_mm.ops.<family> exists
        OpSpec('selective_scan', make_selective_scan, None, grads=('u', 'delta', 'B', 'C'),
               note='Mamba selective scan, D = H * K channels, state 16 (ours: not in the tree yet)',
               peers=dict(mamba=Peer(lambda p: _SelectiveScan.apply(p['u'], p['delta'], p['A'], p['B'], p['C'],
                                                                    p['D'], p['delta_bias']),
                                     module='selective_scan_cuda', note='mamba selective_scan_cuda'))),
        OpSpec('bi_wkv', make_bi_wkv, None, grads=('k', 'v'), causal=False,
               note='Vision-RWKV Bi-WKV, C = H * K channels, fp32 (ours: not in the tree yet)',
               peers=dict(vrwkv=Peer(lambda p: _BiWKV.apply(p['w'], p['u'], p['k'], p['v']), module='bi_wkv',
                                     note='Vision-RWKV bi_wkv'))),
    ]
    return {s.name: s for s in specs}


# ----------------------------------------------------------------------------------------------- running
@contextlib.contextmanager
def poisoned():
    """Output buffers start NaN-filled in the kernels (an unwritten element then fails the check)."""
    try:
        from vla_mm.ops.common import kernel_options
        opts = kernel_options(poison=True)
    except (ImportError, TypeError):  # an older tree: the environment variable alone
        opts = contextlib.nullcontext()
    old = os.environ.get('VLA_OPS_POISON')
    os.environ['VLA_OPS_POISON'] = '1'
    try:
        with opts:
            yield
    finally:
        if old is None:
            os.environ.pop('VLA_OPS_POISON', None)
        else:
            os.environ['VLA_OPS_POISON'] = old


def peer_status(peer, device):
    if peer.cuda_only and device.type != 'cuda':
        return 'needs CUDA'
    if peer.module and importlib.util.find_spec(peer.module.split('.')[0]) is None:
        return f'{peer.module} not installed'
    return 'ok'


class Impl:
    """One implementation at one shape: inputs with gradient leaves, output gradient, timed calls."""

    def __init__(self, call, inputs, grads):
        self.call, self.x = call, inputs
        self.leaves = [inputs[n].requires_grad_() for n in grads if isinstance(inputs.get(n), torch.Tensor)
                       and inputs[n].is_floating_point()]  # in the order of ``grads``
        with torch.no_grad():
            self.do = torch.randn_like(self.fwd())

    def fwd(self):
        return self.call(self.x)

    def fwd_nograd(self):
        with torch.no_grad():
            return self.call(self.x)

    def fwdbwd(self):
        self.call(self.x).backward(self.do)


def make_impl(spec, name, base):
    """Our call or a peer's on fresh leaves made from ``base`` (the spec's inputs)."""
    fresh = {n: (t.detach().clone() if isinstance(t, torch.Tensor) else t) for n, t in base.items()}
    if name == 'ours':
        return Impl(spec.ours, fresh, spec.grads)
    peer = spec.peers[name]
    p = peer.prepare(fresh) if peer.prepare else fresh
    return Impl(peer.call, p, [n for n in spec.grads if n in p])


def floor_bytes(spec, base, out):
    """(forward, forward + backward) bytes: every input and the output once; backward re-reads the inputs, reads
    the output gradient and writes one gradient per differentiable input."""
    ins = [t for t in base.values() if isinstance(t, torch.Tensor)]
    fwd = common.nbytes(*ins, out)
    bwd = common.nbytes(*ins, out) + common.nbytes(*[base[n] for n in spec.grads if base.get(n) is not None])
    return (spec.nbytes(base) if spec.nbytes else (fwd, fwd + bwd))


def check(spec, a, dtype, device, log):
    """Ours against the float64 reference: output and every input gradient (relative error, NaN-poisoned)."""
    base = spec.make(a.check_B, a.check_H, a.check_N, a.K, a.V, dtype, device)
    with poisoned():
        ours = make_impl(spec, 'ours', base)
        o = ours.fwd()
        grads = torch.autograd.grad(o, ours.leaves, ours.do)
    x64 = {n: (t.detach().double().requires_grad_(n in spec.grads) if isinstance(t, torch.Tensor)
               and t.is_floating_point() else t) for n, t in base.items()}
    ref = spec.reference(x64)
    leaves64 = [x64[n] for n in spec.grads if isinstance(x64.get(n), torch.Tensor)]
    grads64 = torch.autograd.grad(ref, leaves64, ours.do.double())
    names = [n for n in spec.grads if isinstance(base.get(n), torch.Tensor)]
    errs = dict(o=common.rel(o, ref), **{f'd{n}': common.rel(g, r) for n, g, r in zip(names, grads, grads64)})
    tol = common.tolerance(dtype)
    ok = all(e < tol for e in errs.values())
    log(f'check {spec.name} {"PASS" if ok else "FAIL"} B{a.check_B} H{a.check_H} N{a.check_N} {dtype} tol {tol:g}: '
        + ' '.join(f'{n}={e:.1e}' for n, e in errs.items()))
    return dict(op=spec.name, N=a.check_N, dtype=str(dtype), tol=tol, ok=ok, errs=errs)


def time_case(spec, names, base, modes, bw, a, device):
    """One (op, N) case: per implementation and mode the median ms, the fwd+bwd peak memory, errors."""
    row = {}
    for name in names:
        try:
            impl = make_impl(spec, name, base)
            for mode in modes:
                fn = impl.fwd_nograd if mode == 'fwd' else impl.fwdbwd
                grads = impl.leaves if mode == 'fwdbwd' else None
                row[f'{name}_{mode}_ms'] = common.bench(fn, grad_to_none=grads, device=device,
                                                        warmup=a.warmup, rep=a.rep)
                if a.graph and device.type == 'cuda':
                    try:
                        row[f'{name}_{mode}_graph_ms'] = common.bench(fn, grad_to_none=grads, graph=True,
                                                                      rep=a.rep, device=device)
                    except Exception as e:  # noqa: BLE001  (capture refused: the figure is missing, not fatal)
                        row[f'{name}_{mode}_graph_error'] = f'{type(e).__name__}: {str(e)[:160]}'
            if 'fwdbwd' in modes:
                row[f'{name}_peak_MiB'] = common.peak_mib(impl.fwdbwd, device)
            if 'floor_fwd_ms' not in row and bw:
                fb, fbb = floor_bytes(spec, base, impl.fwd_nograd())
                row['floor_fwd_ms'], row['floor_fwdbwd_ms'] = common.floor_ms(fb, bw), common.floor_ms(fbb, bw)
            del impl
        except Exception as e:  # noqa: BLE001  (a refusal or a crash of one implementation)
            row[f'{name}_error'] = f'{type(e).__name__}: {str(e)[:200]}'
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    return row


@contextlib.contextmanager
def launches_replaced(handler):
    """Every Triton launch (``JITFunction.run``) goes to ``handler(real_run, kernel, *args, **kwargs)`` instead."""
    from triton.runtime.jit import JITFunction
    real = JITFunction.run
    JITFunction.run = lambda self, *args, **kwargs: handler(real, self, *args, **kwargs)
    try:
        yield
    finally:
        JITFunction.run = real


@contextlib.contextmanager
def _counted_launches(stub=False):
    """Count Triton kernel launches; ``stub``: skip them (what our Python alone costs). Every launch takes
    Triton's ``run`` here (no cached-handle launches, ``launch_cache=False``)."""
    from vla_mm.ops.common import kernel_options
    box = [0]

    def count(real, kernel, *args, **kwargs):
        box[0] += 1
        return None if stub else real(kernel, *args, **kwargs)

    with launches_replaced(count), kernel_options(launch_cache=False):
        yield box


def host_costs(spec, names, a, dtype, device):
    """Host microseconds per call (no synchronisation between calls) at B1 H1 N64: what launches cost. For ours
    also the breakdown: through the custom op in eager mode (``eager_path='custom_op'``, what the autograd.Function
    path saves), with launches through the compiled kernels' cached handles (``launch_cache=True``), with every
    Triton launch skipped (our Python and torch alone), and the launches per call."""
    from vla_mm.ops.common import kernel_options
    base = spec.make(1, 1, a.host_N, a.K, a.V, dtype, device)
    row = dict(op=spec.name)
    for name in names:
        try:
            impl = make_impl(spec, name, base)
            row[f'{name}_fwd_us'] = common.host_us(impl.fwd_nograd, n=a.host_calls, device=device)
            row[f'{name}_fwdbwd_us'] = common.host_us(impl.fwdbwd, n=a.host_calls, device=device)
            if name != 'ours':
                continue
            with kernel_options(eager_path='custom_op'):
                row['ours_customop_fwd_us'] = common.host_us(impl.fwd_nograd, n=a.host_calls, device=device)
                row['ours_customop_fwdbwd_us'] = common.host_us(impl.fwdbwd, n=a.host_calls, device=device)
            with kernel_options(launch_cache=True):
                row['ours_cached_fwd_us'] = common.host_us(impl.fwd_nograd, n=a.host_calls, device=device)
                row['ours_cached_fwdbwd_us'] = common.host_us(impl.fwdbwd, n=a.host_calls, device=device)
            with _counted_launches() as box:
                impl.fwd_nograd()
                row['ours_fwd_launches'], box[0] = box[0], 0
                impl.fwdbwd()
                row['ours_fwdbwd_launches'] = box[0]
            with _counted_launches(stub=True):
                row['ours_nolaunch_fwd_us'] = common.host_us(impl.fwd_nograd, n=a.host_calls, device=device)
                row['ours_nolaunch_fwdbwd_us'] = common.host_us(impl.fwdbwd, n=a.host_calls, device=device)
            common.synchronize(device)
        except Exception as e:  # noqa: BLE001
            row[f'{name}_error'] = f'{type(e).__name__}: {str(e)[:200]}'
    return row


CASE_RESERVE = 30.  # seconds a timed case needs left of the deadline to start


def batch_at(a, N):
    """The batch at N: B * B_at / N (at least 1) under --B-at, else B (timed cases and profiles alike)."""
    return max(1, round(a.B * a.B_at / N)) if a.B_at else a.B


def host_profile(spec, a, dtype, device, rows=25):
    """cProfile of ``--host-calls`` forward+backward calls of ours at the host shape: where the host time goes
    (our Python, torch, Triton's launcher), as a markdown section."""
    impl = make_impl(spec, 'ours', spec.make(1, 1, a.host_N, a.K, a.V, dtype, device))
    common.host_us(impl.fwdbwd, n=20, device=device)
    text = common.host_profile(impl.fwdbwd, a.host_calls, device, rows)
    return f'## {spec.name}: {a.host_calls} fwd+bwd calls, B1 H1 N{a.host_N}\n\n```\n{text}\n```\n\n'


def impl_names(spec, peers, device, log, status):
    names = ['ours'] if spec.ours is not None else []
    for pname, peer in spec.peers.items():
        if pname not in peers:
            continue
        st = peer_status(peer, device)
        status[f'{spec.name}/{pname}'] = st
        if st == 'ok':
            names.append(pname)
        else:
            log(f'{spec.name}: peer {pname} skipped ({st})')
    return names


# ----------------------------------------------------------------------------------------------- report
def report(res, out):
    rows = res['bench']
    peers = [p for p in ('fla', 'sdpa', 'torch', 'cudnn', 'cublas', 'mamba', 'vrwkv')
             if any(f'{p}_fwd_ms' in r or f'{p}_fwdbwd_ms' in r for r in rows)]
    md = [f"# Op benchmark ({res['env'].get('device')}, {res['args']['dtype']})", '',
          f"torch {res['env'].get('torch')}, triton {res['env'].get('triton')}, fla {res['env'].get('fla', '-')}, "
          f"commit {str(res['env'].get('commit'))[:12]}; copy bandwidth {common.fmt(res.get('copy_TBps'))} TB/s "
          '(read + written; the floor is bytes / this). Times: median ms of the autograd call.', '']
    for mode in res['args']['modes']:
        cols = [('op', 'op'), ('B×H×N×K×V', 'shape'), ('ours', f'ours_{mode}_ms')]
        cols += [(p, f'{p}_{mode}_ms') for p in peers]
        cols += [('floor', f'floor_{mode}_ms'),
                 ('ours / floor', lambda r, m=mode: common.ratio(r.get(f'ours_{m}_ms'), r.get(f'floor_{m}_ms')))]
        cols += [(f'ours / {p}', lambda r, m=mode, p=p: common.ratio(r.get(f'ours_{m}_ms'), r.get(f'{p}_{m}_ms')))
                 for p in peers]
        if res['args'].get('graph'):
            cols.append(('ours (graph)', f'ours_{mode}_graph_ms'))
        md += [f"## {'forward' if mode == 'fwd' else 'forward + backward'}", '', common.md_table(rows, cols), '']
    bases = res.get('bases') or {}
    plain = {(r['op'], r['N']): r for r in rows}
    opts = []
    for r in rows:
        b = plain.get((bases.get(r['op']), r['N']))
        if b:
            opts.append(dict(op=r['op'], N=r['N'], **{m: common.ratio(r.get(f'ours_{m}_ms'), b.get(f'ours_{m}_ms'))
                                                      for m in res['args']['modes']}))
    if opts:
        md += ['## options against the plain call (time ratio, same N)', '',
               common.md_table(opts, [('op', 'op'), ('N', 'N')] + [(m, m) for m in res['args']['modes']]), '']
    errs = [(r['op'], r['N'], k, v) for r in rows for k, v in r.items() if k.endswith('_error')]
    if errs:
        md += ['## refused or failed', ''] + [f'- {op} N={n} {k[:-6]}: {v}' for op, n, k, v in errs] + ['']
    if res.get('host'):
        cols = [('op', 'op')] + [(f'{p} {m} µs', f'{p}_{m}_us') for p in ['ours'] + peers for m in ('fwd', 'fwdbwd')]
        cols += [(f'ours {m} {c}', f'ours_{k}{m}_{u}') for k, c, u in (('customop_', 'custom op µs', 'us'),
                 ('cached_', 'cached launch µs', 'us'), ('nolaunch_', 'no launch µs', 'us'),
                 ('', 'launches', 'launches')) for m in ('fwd', 'fwdbwd')]
        md += [f"## host time per call (B1 H1 N{res['args']['host_N']}, no synchronisation between calls)", '',
               common.md_table(res['host'], cols), '']
    if res.get('checks'):
        md += ['## float64 checks', '', common.md_table(res['checks'], [
            ('op', 'op'), ('N', 'N'), ('dtype', 'dtype'), ('pass', 'ok'),
            ('worst', lambda r: max(r['errs'].items(), key=lambda kv: kv[1])[0] if r.get('errs') else r.get('error')),
            ('rel. error', lambda r: max(r['errs'].values()) if r.get('errs') else None)]), '']
    notes = res.get('notes', {})
    if notes:
        md += ['## ops', ''] + [f'- {k}: {v}' for k, v in notes.items()]
    common.write_text(osp.join(out, 'ops.md'), '\n'.join(md))
    panels = []
    for op in dict.fromkeys(r['op'] for r in rows):
        rs = [r for r in rows if r['op'] == op]
        xs = [r['N'] for r in rs]
        series = {}
        for impl, style in [('ours', '-o'), ('fla', '-s'), ('sdpa', '-^'), ('torch', '-v'), ('mamba', '-s'),
                            ('vrwkv', '-s'), ('floor', 'k:')]:
            for mode in res['args']['modes']:
                key = f'{impl}_{mode}_ms'
                if any(key in r for r in rs):
                    series[f'{impl} {mode}'] = (xs, [r.get(key) for r in rs], style if mode == 'fwdbwd' else
                                                style.replace('-', '--'))
        panels.append((op, 'N (tokens)', 'ms (median)', series))
    common.plot_panels(osp.join(out, 'ops.png'), panels,
                       title=f"{res['env'].get('device')}, {res['args']['dtype']}, B{res['args']['B']} "
                             f"H{res['args']['H']} K{res['args']['K']} V{res['args']['V']}")


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True)
    p.add_argument('--ops', default='all', help="comma-separated spec names, or 'all'")
    p.add_argument('--N', default='1024,4096,16384', help='sequence lengths')
    p.add_argument('--B', type=int, default=8)
    p.add_argument('--H', type=int, default=12)
    p.add_argument('--K', type=int, default=64)
    p.add_argument('--V', type=int, default=64)
    p.add_argument('--slots', type=int, default=64, help='GSA slots M')
    p.add_argument('--dtype', default='bf16', choices=['bf16', 'fp16', 'fp32'])
    p.add_argument('--modes', default='fwd,fwdbwd')
    p.add_argument('--peers', default='fla,sdpa,mamba,vrwkv,torch,cudnn,cublas', help="comma-separated, or 'none'")
    p.add_argument('--B-at', dest='B_at', type=int, default=4096,
                   help='B is the batch at this N; at other N the batch is B * B_at / N (at least 1), so every N '
                        'moves about the same tokens (8x12x4096, 2x12x16384, 1x12x65536); 0: B at every N')
    p.add_argument('--check', action=argparse.BooleanOptionalAction, default=False,
                   help='float64 checks of ours first')
    p.add_argument('--check-N', dest='check_N', type=int, default=2048)
    p.add_argument('--check-B', dest='check_B', type=int, default=2)
    p.add_argument('--check-H', dest='check_H', type=int, default=2)
    p.add_argument('--host', action=argparse.BooleanOptionalAction, default=False,
                   help='host microseconds per call at B1 H1 --host-N')
    p.add_argument('--host-profile', dest='host_profile', action='store_true',
                   help='with --host: cProfile of ours per op into host_profile.md')
    p.add_argument('--host-N', dest='host_N', type=int, default=64)
    p.add_argument('--host-calls', dest='host_calls', type=int, default=300)
    p.add_argument('--graph', action='store_true', help='also time CUDA-graph replays')
    p.add_argument('--profile', default='', help='OP@N[,OP@N]: torch.profiler kernel table of ours fwd+bwd')
    p.add_argument('--warmup', type=float, default=25, help='ms of warm-up calls')
    p.add_argument('--rep', type=float, default=100, help='ms of timed calls')
    p.add_argument('--deadline', type=float, default=540, help='seconds for the whole call')
    p.add_argument('--backend', default='auto', choices=['auto', 'triton', 'reference'],
                   help="ours through vla_mm.ops.common.kernel_options(backend=...): 'triton' on CPU tensors runs "
                        "the kernels in Triton's interpreter (TRITON_INTERPRET=1), 'reference' times the PyTorch "
                        'reference')
    p.add_argument('--launch', type=json.loads, default=None,
                   help='launch options of our kernels for the whole run, as JSON: kernel_options(launch=...), e.g. '
                        '\'{"norm_bwd": {"tile": 4096}}\' (names in docs/ops.md); a JSON list of them is an A/B in '
                        'one process: one run per setting into --out/v1, v2, ... (the deadline shared out); an entry '
                        '"_options" holds other kernel_options fields, e.g. {"_options": {"gla_bwd_fp32": false}}')
    p.add_argument('--smoke', action='store_true', help='CPU, tiny shapes, float32 (CI)')
    if '--smoke' in (sys.argv[1:] if argv is None else argv):  # tiny defaults; explicit options still win
        p.set_defaults(N='16,32', B=1, H=2, K=8, V=8, dtype='fp32', slots=4, check_N=16, check_B=1, check_H=2,
                       warmup=1, rep=5, B_at=0, host_N=16, host_calls=2, check=True, host=True, host_profile=True)
    a = p.parse_args(argv)
    return a


def main(argv=None):
    a = parse_args(argv)
    from vla_mm.ops.common import kernel_options
    if not isinstance(a.launch, list):
        with kernel_options(backend=a.backend, **_split_launch(a.launch)):
            return run_benchmark(a)
    # an A/B in one process: the imports, CUDA start-up and peers load once (tens of seconds a run on the GPU
    # machine). Op by op, every setting in turn (into --out/v<i>/<op>): a deadline that runs out loses the last
    # ops for every setting, never one setting's cases (the first, the baseline, pays the most compiles). Each
    # run gets an equal share of what is left over the one case reserve every run keeps.
    t0, rcs = time.time(), []
    ops = list(_specs()) if a.ops == 'all' else a.ops.split(',')
    runs = [(op, i, launch) for op in ops for i, launch in enumerate(a.launch)]
    for j, (op, i, launch) in enumerate(runs):
        left = a.deadline - (time.time() - t0)
        prof = ','.join(p for p in filter(None, a.profile.split(',')) if p.split('@')[0] == op)
        b = argparse.Namespace(**dict(vars(a), out=osp.join(a.out, f'v{i + 1}', op), launch=launch, ops=op,
                                      profile=prof,
                                      deadline=max(0., left - CASE_RESERVE) / (len(runs) - j) + CASE_RESERVE))
        with kernel_options(backend=a.backend, **_split_launch(launch)):
            rcs.append(run_benchmark(b))
    ab_summary(a.out, a.launch)
    return max(rcs, default=0)


AB_METRICS = ('ours_fwd_ms', 'ours_fwd_graph_ms', 'ours_fwdbwd_ms', 'ours_fwdbwd_graph_ms')


def ab_summary(out, launches):
    """``out/ab.md``: per op and N, each setting's times as ratios to the first setting's (v1), read back from the
    runs' results.json (a run that timed nothing leaves its cells empty; ``v<i>/<op>/``, or ``v<i>/`` as runs
    before session 20 wrote them); ``out/ab.png``: each setting's ms against N, a panel per op and mode."""
    runs = []
    for i in range(len(launches)):
        runs.append({(r['op'], r['N']): r for r in common.bench_rows(osp.join(out, f'v{i + 1}'))[0]})
    keys = list(dict.fromkeys(k for run in runs for k in run))
    rows = []
    for op, n in keys:
        base = runs[0].get((op, n), {})
        row = {'op': op, 'N': n, **{f'v1 {m}': base.get(m) for m in AB_METRICS}}
        for i, run in enumerate(runs[1:], start=2):
            row.update({f'v{i} {m}': common.ratio(run.get((op, n), {}).get(m), base.get(m)) for m in AB_METRICS})
        rows.append(row)
    short = {m: m[5:-3] for m in AB_METRICS}   # fwd, fwd_graph, fwdbwd, fwdbwd_graph
    cols = [('op', 'op'), ('N', 'N')] + [(f'v1 {short[m]} ms', f'v1 {m}') for m in AB_METRICS]
    cols += [(f'v{i} / v1 {short[m]}', f'v{i} {m}') for i in range(2, len(runs) + 1) for m in AB_METRICS]
    settings = '\n'.join(f'- v{i + 1}: `{json.dumps(launch or {})}`' for i, launch in enumerate(launches))
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, 'ab.md'), 'w') as f:
        f.write(f'# A/B in one process\n\n{settings}\n\n{common.md_table(rows, cols)}\n')
    panels = []
    for op in dict.fromkeys(k[0] for k in keys):
        ns = sorted(n for o, n in keys if o == op)
        for m in ('ours_fwd_graph_ms', 'ours_fwdbwd_graph_ms'):
            series = {f'v{i + 1}': (ns, [run.get((op, n), {}).get(m) for n in ns], '') for i, run in enumerate(runs)}
            panels.append((f'{op} {short[m]}', 'N', 'ms', series))
    common.plot_panels(osp.join(out, 'ab.png'), panels, title='A/B in one process: settings in ab.md', ncols=4,
                       logy=False)


def _split_launch(launch):
    """kernel_options keyword arguments of one --launch setting: its launch entries, and its "_options"."""
    launch = dict(launch or {})
    return dict(launch.pop('_options', {}), launch=launch)


def run_benchmark(a):
    log, deadline, device = common.start(a.out, a.deadline, cpu=a.smoke)
    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16, fp32=torch.float32)[a.dtype]
    GSA_SLOTS[0] = a.slots
    specs = _specs()
    names = list(specs) if a.ops == 'all' else a.ops.split(',')
    unknown = [n for n in names if n not in specs]
    if unknown:
        sys.exit(f'error: unknown op spec(s) {unknown}; known: {sorted(specs)}')
    peers = set() if a.peers == 'none' else set(a.peers.split(','))
    Ns = [int(n) for n in a.N.split(',')]
    modes = a.modes.split(',')
    res = dict(env=common.describe_env(), args=dict(vars(a), modes=modes), bench=[], checks=[], host=[],
               peer_status={}, notes={n: specs[n].note for n in names},
               bases={n: specs[n].base for n in names if specs[n].base})
    out_json = osp.join(a.out, 'results.json')
    log(res['env'])
    bw = common.copy_bandwidth(nbytes=(1 << 30) if device.type == 'cuda' else (1 << 24), device=device)
    res['copy_TBps'] = bw / 1e12
    log(f'device-to-device copy {bw / 1e12:.3f} TB/s (read + written)')
    if a.check:
        for n in names:
            if specs[n].ours is None or specs[n].reference is None:
                continue
            if deadline.expired(20):  # a check is one small call (plus its kernels' first compile)
                res['checks'].append(dict(op=n, ok=False, error='skipped: deadline'))
                continue
            r = common.guarded(log, f'check {n}', check, specs[n], a, dtype, device, log)
            res['checks'].append(r or dict(op=n, ok=False, error='raised (see log)'))
            common.write_json(out_json, res)
    if a.host:
        for n in names:
            # ours and the peers without autotuners
            todo = [i for i in impl_names(specs[n], peers, device, log, {})
                    if i in ('ours', 'sdpa', 'torch', 'cudnn', 'cublas')]
            res['host'].append(host_costs(specs[n], todo, a, dtype, device))
            if a.host_profile and specs[n].ours is not None:
                with open(osp.join(a.out, 'host_profile.md'), 'a') as f:
                    f.write(host_profile(specs[n], a, dtype, device))
        common.write_json(out_json, res)
    for n in names:
        spec = specs[n]
        todo = impl_names(spec, peers, device, log, res['peer_status'])
        if not todo:
            log(f'{n}: nothing to time here (ours not in the tree, no peer available)')
            continue
        for N in Ns:
            B = batch_at(a, N)
            row = dict(op=n, B=B, H=a.H, N=N, K=a.K, V=a.V, shape=f'{B}×{a.H}×{N}×{a.K}×{a.V}')
            if deadline.expired(CASE_RESERVE):
                row['skipped'] = 'deadline'
                log(f'{n} N={N}: skipped (deadline)')
            else:
                base = spec.make(B, a.H, N, a.K, a.V, dtype, device)
                row.update(time_case(spec, todo, base, modes, bw, a, device))
                del base
                log(f'{n} N={N}: ' + ', '.join(f'{k}={common.fmt(v)}' for k, v in row.items()
                                              if k.endswith(('_ms', '_error'))))
            res['bench'].append(row)
            common.write_json(out_json, res)
        common.guarded(log, 'report', report, res, a.out)  # after each op: a killed call keeps its tables
    for item in filter(None, a.profile.split(',')):
        op, N = item.split('@')
        def prof(op=op, N=int(N)):
            impl = make_impl(specs[op], 'ours', specs[op].make(batch_at(a, N), a.H, N, a.K, a.V, dtype, device))
            table, rows = common.profile(impl.fwdbwd, iters=5, device=device)
            res.setdefault('profile', {})[item] = rows[:40]
            with open(osp.join(a.out, 'profile.md'), 'a') as f:
                f.write(f'## {op} fwd+bwd B{batch_at(a, N)} H{a.H} N{N}, 5 iterations\n\n```\n{table}\n```\n\n')
        common.guarded(log, f'profile {item}', prof)
    common.write_json(out_json, res)
    common.guarded(log, 'report', report, res, a.out)
    fails = [c['op'] for c in res['checks'] if not c.get('ok')]
    log(f'done: {len(res["bench"])} cases, checks failed: {fails or "none"}; files: {sorted(os.listdir(a.out))}')
    return 1 if fails else 0


if __name__ == '__main__':
    sys.exit(main())
