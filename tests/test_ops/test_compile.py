"""torch.compile through every public op (CPU, tiny shapes).

Each op is a custom op ``vla_mm::<name>``: ``torch.compile(fullgraph=True)`` must trace the public function
without a graph break, with the op as one node of the graph, and forward + backward must equal eager. Both
paths inside the op are compiled: the PyTorch reference (what a CPU run takes) and the Triton kernels (under
the interpreter, ``kernel_options(backend='triton')``), whose fake implementation must describe exactly what the
kernels return and keep for the backward. ``torch.library.opcheck`` checks each registration.
"""
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from tests.dynamo_compat import contextvars_untraceable
from vla_mm.ops.common import kernel_options
from vla_mm.ops.conv import short_conv
from vla_mm.ops.delta_rule import delta_rule
from vla_mm.ops.gla import chunk_gla, chunk_retention
from vla_mm.ops.gsa import gsa
from vla_mm.ops.hgrn import hgrn
from vla_mm.ops.linear_attn import linear_attn, linear_attn_qkv
from vla_mm.ops.norm import add_layer_norm, layer_norm
from vla_mm.ops.reduce import sum_rows


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _la_inputs():
    g = _gen(1)
    x = torch.randn(2, 9, 3, 2, 16, generator=g)          # one projection, q / k / v as views of it
    rope = torch.rand(9, 8, generator=g) * 6
    return dict(x=x.requires_grad_(), cos=rope.cos(), sin=rope.sin())


def _la(x, cos, sin):
    q, k, v = x.unbind(2)
    return (linear_attn(q, k, v, feature_map='focused', rope=(cos, sin)),)


def _la_qkv(x, cos, sin):
    return (linear_attn_qkv(x, feature_map='elu1', rope=(cos, sin)),)


def _la_varlen(x, cos, sin):
    q, k, v = (t[:1] for t in x.unbind(2))
    return (linear_attn(q, k, v, normalize=False, cu_seqlens=torch.tensor([0, 4, 9], dtype=torch.int32)),)


def _gla_inputs():
    g = _gen(2)
    B, N, H, K, V = 1, 20, 2, 16, 8
    return dict(q=torch.randn(B, N, H, K, generator=g), k=torch.randn(B, N, H, K, generator=g),
                v=torch.randn(B, N, H, V, generator=g), g=F.logsigmoid(torch.randn(B, N, H, K, generator=g) + 1),
                u=torch.randn(H, K, generator=g), h0=torch.randn(2, H, K, V, generator=g))


def _gla(q, k, v, g, u, h0):
    cu = torch.tensor([0, 7, 20], dtype=torch.int32)
    o, ht = chunk_gla(q, k, v, g, u=u, initial_state=h0, output_final_state=True, cu_seqlens=cu, reverse=True)
    return o, ht


def _retention(q, k, v, g, u, h0):
    return chunk_retention(q, k, v)[:1]


def _gsa_inputs():
    g = _gen(3)
    B, N, H, K, V, M = 1, 12, 1, 16, 8, 4
    return dict(q=torch.randn(B, N, H, K, generator=g), k=torch.randn(B, N, H, K, generator=g),
                v=torch.randn(B, N, H, V, generator=g), s=torch.randn(B, N, H, M, generator=g).softmax(-1),
                g=F.logsigmoid(torch.randn(B, N, H, M, generator=g) + 2))


def _gsa(q, k, v, s, g):
    o, (hk, hv) = gsa(q, k, v, s, g, output_final_state=True, reverse=True)
    return o, hk, hv


def _hgrn_inputs():
    g = _gen(4)
    return dict(x=torch.randn(2, 11, 8, generator=g), g=F.logsigmoid(torch.randn(2, 11, 8, generator=g)),
                h0=torch.randn(2, 8, generator=g))


def _hgrn(x, g, h0):
    return hgrn(x, g, initial_state=h0, output_final_state=True)


def _delta_inputs():
    g = _gen(6)
    B, N, H, K, V = 1, 10, 2, 16, 8
    k = F.normalize(torch.randn(B, N, H, K, generator=g), dim=-1)
    return dict(q=torch.randn(B, N, H, K, generator=g), k=k, v=torch.randn(B, N, H, V, generator=g),
                beta=torch.rand(B, N, H, generator=g), g=-F.softplus(torch.randn(B, N, H, generator=g)),
                h0=torch.randn(2, H, K, V, generator=g))


def _delta(q, k, v, beta, g, h0):
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    return delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, cu_seqlens=cu, reverse=True)


def _norm_inputs():
    g = _gen(7)
    return dict(x=torch.randn(2, 5, 3, 16, generator=g), w=torch.randn(16, generator=g),
                gate=torch.randn(2, 5, 3, 16, generator=g))


def _norm(x, w, gate):
    return (layer_norm(x, w, None, 1e-5, rms=True, gate=gate), layer_norm(x, w, w, 1e-6, out_dtype=torch.float64))


def _add_norm(x, w, gate):
    y, s = add_layer_norm(gate, x, w, w, 1e-6, out_dtype=torch.bfloat16)
    return y, s * 2


def _conv_inputs():
    g = _gen(8)
    return dict(x=torch.randn(1, 9, 6, generator=g), w=torch.randn(6, 4, generator=g), b=torch.randn(6, generator=g))


def _conv(x, w, b):
    cu = torch.tensor([0, 2, 9], dtype=torch.int32)
    return (short_conv(x, w, b, activation='silu', reverse=True, cu_seqlens=cu), short_conv(x[..., :4], w[:4]))


def _sum_rows(x, w, b):
    return (sum_rows(x[..., :4]), )


CASES = {
    'linear_attn': (_la, _la_inputs, 'linear_attn'),
    'linear_attn_varlen': (_la_varlen, _la_inputs, 'linear_attn'),
    'linear_attn_qkv': (_la_qkv, _la_inputs, 'linear_attn_qkv'),
    'chunk_gla': (_gla, _gla_inputs, 'chunk_gla'),
    'chunk_retention': (_retention, _gla_inputs, 'chunk_gla'),
    'gsa': (_gsa, _gsa_inputs, 'chunk_gla'),
    'hgrn': (_hgrn, _hgrn_inputs, 'hgrn'),
    'delta_rule': (_delta, _delta_inputs, 'delta_rule'),
    'layer_norm': (_norm, _norm_inputs, 'layer_norm'),
    'add_layer_norm': (_add_norm, _norm_inputs, 'add_layer_norm'),
    'short_conv': (_conv, _conv_inputs, 'short_conv'),
    'sum_rows': (_sum_rows, _conv_inputs, 'sum_rows'),
}


def _run(fn, inputs):
    """Outputs and the gradients of every input (but the rope tables) of a fixed random projection of the
    outputs."""
    leaves = {n: t.detach().clone().requires_grad_(n not in ('cos', 'sin')) for n, t in inputs.items()}
    outs = fn(**leaves)
    g = _gen(9)
    loss = sum((o.float() * torch.randn(o.shape, generator=g)).sum() for o in outs)
    grads = torch.autograd.grad(loss, [t for t in leaves.values() if t.requires_grad], allow_unused=True)
    return [o.detach() for o in outs], [g for g in grads if g is not None]


# every case through the reference; the Triton path (interpreter: slow) once per op
@pytest.mark.parametrize('case, path', [(c, 'reference') for c in CASES] +
                         [('linear_attn', 'triton'), ('linear_attn_qkv', 'triton'), ('chunk_gla', 'triton'), ('hgrn', 'triton'),
                          ('delta_rule', 'triton'), ('layer_norm', 'triton'), ('add_layer_norm', 'triton'),
                          ('short_conv', 'triton'), ('sum_rows', 'triton')])
def test_compiled_equals_eager(case, path):
    fn, make, op = CASES[case]
    inputs = make()
    targets = []

    def recording_backend(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == 'call_function')
        return torch._dynamo.lookup_backend('aot_eager')(gm, example_inputs)

    torch._dynamo.reset()
    with kernel_options(backend=path, poison=True):
        eager = _run(fn, inputs)
        with contextvars_untraceable():  # torch < 2.13: an options read in the traced call would break the graph
            compiled = _run(torch.compile(fn, fullgraph=True, backend=recording_backend), inputs)
    torch._dynamo.reset()
    assert f'vla_mm.{op}.default' in targets, targets          # the op is one node: dynamo never traced into it
    assert len(eager[1]) == len(compiled[1])
    for a, b in zip(eager[0] + eager[1], compiled[0] + compiled[1]):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def _opcheck_args(name):
    g = _gen(5)
    if name == 'linear_attn':
        q, k, v = (torch.randn(1, 6, 2, 8, generator=g).requires_grad_() for _ in range(3))
        return torch.ops.vla_mm.linear_attn.default, (q, k, v, 'elu1', True, None, 1e-6, 3.0, None, None,
                                                       'standard', None, None)
    if name == 'linear_attn_qkv':
        qkv = torch.randn(1, 6, 3, 2, 8, generator=g).requires_grad_()
        return torch.ops.vla_mm.linear_attn_qkv.default, (qkv, 'focused', True, None, 1e-6, 3.0, None, None,
                                                           'standard', None, None)
    if name == 'chunk_gla':
        q, k, v = (torch.randn(1, 6, 1, 8, generator=g).requires_grad_() for _ in range(3))
        gk = F.logsigmoid(torch.randn(1, 6, 1, generator=g)).requires_grad_()
        h0 = torch.randn(1, 1, 8, 8, generator=g).requires_grad_()
        return torch.ops.vla_mm.chunk_gla.default, (q, k, v, gk, None, None, 0.5, h0, True, None, True, 16)
    if name == 'delta_rule':
        q, k, v = (torch.randn(1, 6, 1, 8, generator=g).requires_grad_() for _ in range(3))
        beta = torch.rand(1, 6, 1, generator=g).requires_grad_()
        return torch.ops.vla_mm.delta_rule.default, (q, k, v, beta, None, 0.5, None, True, None, False)
    if name == 'add_layer_norm':
        x, r = (torch.randn(2, 3, 8, generator=g).requires_grad_() for _ in range(2))
        w, b = (torch.randn(8, generator=g).requires_grad_() for _ in range(2))
        return torch.ops.vla_mm.add_layer_norm.default, (x.bfloat16().detach().requires_grad_(), r, w, b, 1e-5,
                                                         False, 'bfloat16')
    if name == 'layer_norm':
        x, gate = (torch.randn(2, 3, 8, generator=g).requires_grad_() for _ in range(2))
        w, b = (torch.randn(8, generator=g).requires_grad_() for _ in range(2))
        return torch.ops.vla_mm.layer_norm.default, (x, w, b, gate, 1e-5, False, 'bfloat16')
    if name == 'short_conv':
        x = torch.randn(1, 7, 5, generator=g).requires_grad_()
        w, b = torch.randn(5, 3, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_()
        return torch.ops.vla_mm.short_conv.default, (x, w, b, torch.tensor([0, 3, 7]), 'silu', False)
    if name == 'sum_rows':
        return torch.ops.vla_mm.sum_rows.default, (torch.randn(2, 7, 5, generator=g).requires_grad_(),)
    x = torch.randn(1, 6, 4, generator=g).requires_grad_()
    gg = F.logsigmoid(torch.randn(1, 6, 4, generator=g)).requires_grad_()
    return torch.ops.vla_mm.hgrn.default, (x, gg, None, None, True, False, True, 16)


@pytest.mark.parametrize('path', ['reference', 'triton'])
@pytest.mark.parametrize('name', ['linear_attn', 'linear_attn_qkv', 'chunk_gla', 'hgrn', 'delta_rule', 'layer_norm',
                                  'add_layer_norm', 'short_conv', 'sum_rows'])
def test_opcheck(name, path):
    op, args = _opcheck_args(name)
    with kernel_options(backend=path):
        torch.library.opcheck(op, args)


def test_no_final_state_maps_to_none_and_float64_takes_reference():
    q = torch.randn(1, 5, 1, 8, dtype=torch.float64)
    with kernel_options(backend='triton'):                 # float64: the reference even when Triton is asked for
        o, ht = chunk_gla(q, q, q)
        o2, ht2 = hgrn(q[..., 0, :], F.logsigmoid(q[..., 0, :]))
    assert ht is None and ht2 is None and o.dtype == o2.dtype == torch.float64


@pytest.mark.skipif(os.environ.get('VLA_TEST_INDUCTOR', '0') in ('', '0') or shutil.which('g++') is None,
                    reason='inductor compiles C++ (about a minute cold on 2 cores): VLA_TEST_INDUCTOR=1 runs it')
def test_inductor_compiles_through_the_ops():
    inputs = _hgrn_inputs()
    torch._dynamo.reset()
    eager = _run(_hgrn, inputs)
    compiled = _run(torch.compile(_hgrn, fullgraph=True, backend='inductor'), inputs)
    torch._dynamo.reset()
    for a, b in zip(eager[0] + eager[1], compiled[0] + compiled[1]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
