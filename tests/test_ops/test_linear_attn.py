"""Tests of ops/linear_attn: the reference against a quadratic-form oracle, argument checks, and the Triton
kernels (under TRITON_INTERPRET=1 on CPU, set by tests/conftest.py) against a float64 reference.

Fresh random inputs every run (the seed is printed, re-run a failure with LA_TEST_SEED=<seed>); kernel outputs
are poisoned with NaN before the kernels write (``kernel_options(poison=True)``) so unwritten elements fail.
"""
import os
import random

import pytest
import torch

try:
    from vla_mm.ops.linear_attn import (linear_attn, linear_attn_reference, linear_attn_triton)
    from vla_mm.ops.linear_attn.reference import feature_map_ref, rotate_pairs, expand_rope_table
except ImportError:  # running from a source tree without the package installed
    from ops.linear_attn import (linear_attn, linear_attn_reference, linear_attn_triton)
    from ops.linear_attn.reference import feature_map_ref, rotate_pairs, expand_rope_table

SEED = int(os.environ.get('LA_TEST_SEED', random.randrange(2 ** 31)))
print(f'test_linear_attn seed: {SEED} (LA_TEST_SEED={SEED} to repeat)')
GEN = torch.Generator().manual_seed(SEED)


def randn(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=GEN, dtype=torch.float64) * scale).to(dtype)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_rope(B, N, H, K, kind):
    """Random angle tables of the three accepted shapes."""
    shape = {'nk': (N, K // 2), 'nhk': (N, H, K // 2), 'bnhk': (B, N, H, K // 2)}[kind]
    ang = torch.rand(*shape, generator=GEN, dtype=torch.float64) * 6.3
    return ang.cos(), ang.sin()


def oracle(q, k, v, feature_map='elu1', normalize=True, scale=None, eps=1e-6, focus_power=3.0, rope=None,
           norm='standard', key_padding_mask=None, cu_seqlens=None):
    """Quadratic form, float64, one (sequence, head) at a time: o_i = sum_j a_ij v_j / (sum_j b_ij + eps')."""
    q, k, v = q.double(), k.double(), v.double()
    B, N, H, K = q.shape
    fq, fk = feature_map_ref(q, feature_map, focus_power), feature_map_ref(k, feature_map, focus_power)
    if rope is not None:
        cos = expand_rope_table(rope[0].double(), B, N, H, K // 2)
        sin = expand_rope_table(rope[1].double(), B, N, H, K // 2)
        rq, rk = rotate_pairs(fq, cos, sin), rotate_pairs(fk, cos, sin)
    else:
        rq, rk = fq, fk
    o = torch.zeros(B, N, H, v.shape[-1], dtype=torch.float64)
    seqs = []
    if cu_seqlens is not None:
        cu = cu_seqlens.tolist()
        seqs = [(0, torch.arange(cu[s], cu[s + 1])) for s in range(len(cu) - 1)]
    else:
        for b in range(B):
            idx = torch.arange(N) if key_padding_mask is None else key_padding_mask[b].nonzero()[:, 0]
            seqs.append((b, idx))
    for b, idx in seqs:
        n = len(idx)
        if n == 0:
            continue
        for h in range(H):
            a = rq[b, idx, h] @ rk[b, idx, h].T                       # [n, n]
            num = a @ v[b, idx, h]
            if normalize:
                den = (fq[b, idx, h] @ fk[b, idx, h].T).sum(1) + (eps * n if norm == 'linfusion' else eps)
                res = num / den[:, None] * (1.0 if scale is None else scale)
            else:
                res = num * (1.0 / n if scale is None else scale)
            o[b, idx, h] = res
    return o


# ----------------------------------------------------------------------------------------------------------
# the reference
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('feature_map', ['identity', 'elu1', 'relu', 'focused'])
@pytest.mark.parametrize('variant', ['norm', 'unnorm', 'linfusion', 'rope', 'mask', 'varlen'])
def test_reference_matches_oracle(feature_map, variant):
    B, N, H, K, V = 2, 13, 2, 8, 6
    kw = dict(feature_map=feature_map)
    if variant == 'unnorm':
        kw['normalize'] = False
    if variant == 'linfusion':
        kw['norm'] = 'linfusion'
        kw['eps'] = 1e-2
    if variant == 'rope':
        kw['rope'] = make_rope(B, N, H, K, 'nhk')
    if variant == 'mask':
        m = torch.rand(B, N, generator=GEN) > 0.3
        m[0, 0] = True
        kw['key_padding_mask'] = m
    if variant == 'varlen':
        B = 1
        kw['cu_seqlens'] = torch.tensor([0, 3, 3, 10, N])
    q, k, v = randn(B, N, H, K), randn(B, N, H, K), randn(B, N, H, V)
    if feature_map == 'identity' and kw.get('normalize', True):   # keep the normalizer away from zero
        q, k = q.abs() + 0.5, k.abs() + 0.5
    out = linear_attn_reference(q, k, v, **kw)
    assert out.dtype == v.dtype and out.shape == (B, N, H, V)
    ref = oracle(q, k, v, **kw)
    assert rel_err(out, ref) < 1e-5


def test_reference_float64_and_grad():
    q, k, v = (randn(1, 9, 2, 6, dtype=torch.float64).requires_grad_() for _ in range(3))
    for fm in ('elu1', 'focused'):
        torch.autograd.gradcheck(lambda a, b, c: linear_attn_reference(a, b, c, feature_map=fm), (q, k, v))


def test_focused_map_properties():
    x = randn(5, 16, dtype=torch.float64, scale=3.0)
    y = feature_map_ref(x, 'focused', 3.0)
    r = torch.relu(x) + 1e-6
    assert torch.allclose(y.norm(dim=-1), r.norm(dim=-1))                 # keeps the norm of relu(x)
    expect = r ** 3 / (r ** 3).norm(dim=-1, keepdim=True) * r.norm(dim=-1, keepdim=True)
    assert torch.allclose(y, expect)
    big = feature_map_ref(torch.full((2, 8), 3e4, dtype=torch.bfloat16).float(), 'focused', 3.0)
    assert torch.isfinite(big).all()


def test_public_op_dispatches_to_reference_on_cpu():
    q, k, v = randn(2, 10, 3, 8), randn(2, 10, 3, 8), randn(2, 10, 3, 4)
    torch.testing.assert_close(linear_attn(q, k, v), linear_attn_reference(q, k, v), rtol=0, atol=0)


@pytest.mark.parametrize('bad, match', [
    (dict(q=(2, 5, 3, 300)), 'K must be'),
    (dict(v=(2, 5, 3, 257)), 'V must be'),
    (dict(k=(2, 6, 3, 8)), 'k must have'),
    (dict(v=(2, 5, 4, 8)), 'v must have'),
    (dict(q=(2, 5, 8)), 'q must have shape'),
    (dict(feature_map='softmax'), 'feature_map'),
    (dict(norm='l2'), 'norm must'),
    (dict(norm='linfusion', normalize=False), 'only applies'),
    (dict(key_padding_mask='float'), 'key_padding_mask'),
    (dict(cu_seqlens=[0, 2, 5]), 'B == 1'),
    (dict(rope='odd'), 'rope cos'),
    (dict(dtype=torch.int32), 'float32'),
])
def test_argument_errors(bad, match):
    shapes = dict(q=(2, 5, 3, 8), k=(2, 5, 3, 8), v=(2, 5, 3, 8))
    for n in ('q', 'k', 'v'):
        if n in bad:
            shapes[n] = bad[n]
            if n == 'q' and len(bad[n]) == 4:
                shapes['k'] = bad[n]
    dt = bad.get('dtype', torch.float32)
    q, k, v = (randn(*shapes[n]).to(dt) for n in ('q', 'k', 'v'))
    kw = {n: bad[n] for n in ('feature_map', 'norm', 'normalize') if n in bad}
    if bad.get('key_padding_mask') == 'float':
        kw['key_padding_mask'] = torch.ones(2, 5)
    if 'cu_seqlens' in bad:
        kw['cu_seqlens'] = torch.tensor(bad['cu_seqlens'])
    if bad.get('rope') == 'odd':
        kw['rope'] = (torch.ones(5, 3), torch.ones(5, 3))
    for fn in (linear_attn, linear_attn_triton):
        with pytest.raises(ValueError, match=match):
            fn(q, k, v, **kw)


# ----------------------------------------------------------------------------------------------------------
# the Triton kernels (interpreter on CPU), forward and every gradient against a float64 reference
# ----------------------------------------------------------------------------------------------------------
try:
    from vla_mm.ops.common import kernel_options
    from vla_mm.ops.linear_attn import kernel as la_kernel
except ImportError:
    from ops.common import kernel_options
    from ops.linear_attn import kernel as la_kernel

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
TOL = {F32: 1e-5, BF16: 1e-2, F16: 1e-2}

# (B, N, H, K, V), dtype, feature map, options. Every N in {1, 7, 197, 1031}, K in {16, 32, 48, 64, 128} (and 256,
# the largest head dim), K != V, several B and H, every feature map, option and dtype appear; not the product.
KCASES = [
    ((2, 7, 3, 16, 32), F32, 'elu1', {}),
    ((1, 197, 2, 32, 16), F32, 'relu', {}),
    ((3, 197, 1, 48, 40), F32, 'focused', {}),
    ((1, 1031, 1, 64, 64), F32, 'elu1', {}),
    ((2, 1, 2, 128, 96), F32, 'elu1', dict(normalize=False)),
    ((2, 1, 1, 32, 16), F32, 'focused', dict(normalize=False, scale=0.5)),
    ((2, 7, 2, 128, 256), F32, 'focused', {}),                  # V split over blocks (dq pass apart)
    ((1, 13, 1, 256, 256), F32, 'relu', {}),                    # largest head dims
    ((2, 33, 2, 32, 32), F32, 'identity', dict(normalize=False)),
    ((2, 33, 2, 32, 24), F32, 'identity', dict(positive=True)),
    ((2, 50, 2, 64, 32), F32, 'elu1', dict(norm='linfusion', eps=1e-2)),
    ((2, 50, 2, 64, 32), F32, 'focused', dict(normalize=False, scale=0.3)),
    ((2, 50, 2, 48, 32), F32, 'focused', dict(focus_power=2.5)),
    ((2, 50, 2, 32, 32), F32, 'elu1', dict(rope='nk')),
    ((2, 50, 3, 32, 16), F32, 'focused', dict(rope='nhk', normalize=False)),
    ((2, 50, 2, 64, 64), F32, 'relu', dict(rope='bnhk', norm='linfusion')),
    ((3, 60, 2, 32, 24), F32, 'elu1', dict(mask=True)),
    ((3, 60, 2, 48, 24), F32, 'focused', dict(mask=True, rope='nk', normalize=False)),
    ((1, 90, 2, 32, 24), F32, 'elu1', dict(cu=[0, 7, 7, 50, 90])),
    ((1, 90, 2, 64, 48), F32, 'focused', dict(cu=[0, 1, 40, 90], rope='nhk')),
    ((1, 1031, 2, 16, 16), F32, 'relu', dict(cu=[0, 1, 198, 1031], norm='linfusion')),
    ((2, 64, 2, 32, 48), F32, 'elu1', dict(noncontig='fused')),
    ((2, 64, 2, 48, 32), F32, 'focused', dict(noncontig='bhnd', mask=True)),
    ((2, 197, 2, 64, 64), BF16, 'elu1', {}),
    ((2, 197, 2, 64, 48), BF16, 'focused', dict(mask=True)),
    ((1, 100, 2, 32, 32), BF16, 'relu', dict(cu=[0, 30, 100], normalize=False)),
    ((2, 64, 2, 128, 128), BF16, 'elu1', dict(rope='nk', noncontig='fused')),
    ((2, 197, 2, 48, 64), F16, 'focused', {}),
    ((2, 64, 2, 32, 32), F16, 'elu1', dict(norm='linfusion', eps=1e-3)),
]


@pytest.fixture
def poison():
    with kernel_options(poison=True):
        yield


def make_inputs(shape, dtype, opts, scale=1.0):
    B, N, H, K, V = shape
    nc = opts.get('noncontig')
    if nc == 'fused':      # slices of one projection [B, N, H, 2K + V], as a mixer's unbind gives
        x = randn(B, N, H, 2 * K + V, dtype=dtype, scale=scale)
        q, k, v = x[..., :K], x[..., K:2 * K], x[..., 2 * K:]
    elif nc == 'bhnd':     # [B, H, N, D] storage seen through a transpose
        q, k = (randn(B, H, N, K, dtype=dtype, scale=scale).transpose(1, 2) for _ in range(2))
        v = randn(B, H, N, V, dtype=dtype, scale=scale).transpose(1, 2)
    else:
        q, k, v = randn(B, N, H, K, dtype=dtype, scale=scale), randn(B, N, H, K, dtype=dtype, scale=scale), \
            randn(B, N, H, V, dtype=dtype, scale=scale)
    if opts.get('positive'):
        q, k = q.abs() + 0.5, k.abs() + 0.5
    if nc:
        assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    kw = {n: opts[n] for n in ('normalize', 'scale', 'eps', 'focus_power', 'norm') if n in opts}
    if 'rope' in opts:
        kw['rope'] = make_rope(B, N, H, K, opts['rope'])
    if opts.get('mask'):
        m = torch.rand(B, N, generator=GEN) > 0.3
        m[:, 0] = True
        m[-1, :] = False if B > 2 else m[-1, :]     # one fully padded image when B > 2
        kw['key_padding_mask'] = m
    if 'cu' in opts:
        kw['cu_seqlens'] = torch.tensor(opts['cu'], dtype=torch.int32)
    return (q, k, v), kw


def check_kernel(shape, dtype, fm, opts, scale=1.0):
    """Relative errors of the kernel's output and gradients against float64, and the bound each must meet:
    ``TOL[dtype]``, or in fp32 four times the plain fp32 reference's own error where that is larger (the focused
    map's gradient is ill-conditioned for some draws: one in a few thousand loses 1e-5 in any fp32 code)."""
    (q, k, v), kw = make_inputs(shape, dtype, opts, scale)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    o = linear_attn_triton(q, k, v, feature_map=fm, **kw)
    assert o.dtype == v.dtype and o.shape == v.shape[:3] + (v.shape[-1],)
    g = randn(*o.shape).to(o.dtype)
    got = (o, *torch.autograd.grad(o, (q, k, v), g))
    for n, t in zip(NAMES, got):
        assert torch.isfinite(t).all(), f'{n} has NaN/Inf (unwritten elements are NaN-poisoned)'
    if 'key_padding_mask' in kw:   # padded tokens: zero output and zero gradients
        pad = ~kw['key_padding_mask']
        for n, t in zip(NAMES, got):
            assert (t[pad] == 0).all(), f'{n} not zero at padded tokens'
    ref = reference_with_grads((q, k, v), g, fm, kw, torch.float64)
    errs = {n: rel_err(a, b) for n, a, b in zip(NAMES, got, ref)}
    bounds = dict.fromkeys(NAMES, TOL[dtype])
    if dtype == F32:
        ref32 = reference_with_grads((q, k, v), g, fm, kw, torch.float32)
        bounds = {n: max(TOL[F32], 4 * rel_err(a, b)) for n, a, b in zip(NAMES, ref32, ref)}
    return errs, bounds


NAMES = ('o', 'dq', 'dk', 'dv')


def reference_with_grads(qkv, g, fm, kw, dtype):
    """(o, dq, dk, dv) of the plain reference on ``qkv`` cast to ``dtype``."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in qkv]
    o = linear_attn_reference(*leaves, feature_map=fm, **kw)
    return (o, *torch.autograd.grad(o, leaves, g.to(dtype)))


def within(errs, bounds):
    return all(errs[n] < bounds[n] for n in errs)


@pytest.mark.parametrize('shape, dtype, fm, opts', KCASES,
                         ids=[f'{"x".join(map(str, s))}-{str(d)[6:]}-{f}-{"-".join(o)}' for s, d, f, o in KCASES])
def test_kernel_matches_float64_reference(poison, shape, dtype, fm, opts):
    errs, bounds = check_kernel(shape, dtype, fm, opts)
    print(shape, dtype, fm, opts, errs, bounds)
    assert within(errs, bounds), (errs, bounds)


@pytest.mark.parametrize('dtype, fm', [(BF16, 'elu1'), (F16, 'focused'), (BF16, 'relu'), (F16, 'elu1')])
def test_kernel_large_magnitude_half_inputs(poison, dtype, fm):
    """Inputs of magnitude ~1e3: the states and the normalizer stay in fp32, no overflow, still accurate."""
    errs, bounds = check_kernel((2, 197, 2, 64, 32), dtype, fm, {}, scale=1e3 if dtype == BF16 else 3e2)
    assert within(errs, bounds), (errs, bounds)


def test_kernel_no_grad_and_public_dispatch_env(poison, monkeypatch):
    (q, k, v), kw = make_inputs((2, 20, 2, 32, 16), F32, {})
    with torch.no_grad():
        o = linear_attn_triton(q, k, v)
    assert rel_err(o, linear_attn_reference(q.double(), k.double(), v.double())) < 1e-5
    monkeypatch.setenv('VLA_OPS_REFERENCE', '1')
    torch.testing.assert_close(linear_attn(q, k, v), linear_attn_reference(q, k, v), rtol=0, atol=0)


@pytest.mark.parametrize('shape, opts', [((1, 1031, 1, 16, 16), {}), ((1, 1031, 2, 16, 16), dict(cu=[0, 1, 198, 1031]))],
                         ids=['dense', 'varlen'])
def test_kernel_deterministic_mode(poison, shape, opts):
    """Under torch.use_deterministic_algorithms(True) the reducing kernels (F1, B1) take one program per
    sequence, so each element of S, z, dS, dz gets exactly one fp32 atomic add (bitwise repeatable on a GPU,
    where the default split over N adds in a run-dependent order); results stay exact."""
    (q, k, v), kw = make_inputs(shape, F32, opts)
    nseq = shape[0] if 'cu' not in opts else len(opts['cu']) - 1

    def plan():
        return la_kernel.plan(q, v, 'elu1', True, None, 1e-6, 3.0, None, 'standard', None, kw.get('cu_seqlens'))
    default = plan()
    assert default.chunks['red'][0] > nseq  # the default plan splits a sequence over several reducing programs
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        det = plan()
        assert det.deterministic and det.chunks['red'][0] == nseq
        assert det.chunks['map'][:2] == default.chunks['map'][:2]  # the streaming kernels keep their split
        errs, bounds = check_kernel(shape, F32, 'elu1', opts)
        assert within(errs, bounds), (errs, bounds)
        o1 = linear_attn_triton(q, k, v, **kw)
        o2 = linear_attn_triton(q, k, v, **kw)
        assert torch.equal(o1, o2)
    finally:
        torch.use_deterministic_algorithms(prev)
    assert not plan().deterministic


class _Spy:
    """Wraps a kernel and records the positional arguments of each launch."""

    def __init__(self, kernel):
        self.kernel, self.fn, self.calls = kernel, kernel.fn, []

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kw):
            self.calls.append(args)
            return launch(*args, **kw)
        return run


@pytest.mark.parametrize('layout', ['fused', 'bhnd'])
def test_kernel_reads_strided_views_without_copies(poison, monkeypatch, layout):
    """q, k, v as views of one projection (``reshape(B, N, 3, H, D).unbind(2)``) or of [B, H, N, D] storage reach
    the kernels as they are (same storage and strides: no copy), and give the bits of contiguous inputs."""
    B, N, H, D = 2, 20, 2, 16
    if layout == 'fused':
        x = randn(B, N, 3 * H * D).requires_grad_()
        q, k, v = x.reshape(B, N, 3, H, D).unbind(2)
    else:
        x = randn(3, B, H, N, D).requires_grad_()
        q, k, v = (t.transpose(1, 2) for t in x.unbind(0))
    assert not any(t.is_contiguous() for t in (q, k, v))
    names = ('_fwd_state_kernel', '_fwd_out_kernel', '_bwd_q_kernel', '_bwd_kv_kernel')
    spies = {n: _Spy(getattr(la_kernel, n)) for n in names}
    for n, spy in spies.items():
        monkeypatch.setattr(la_kernel, n, spy)
    do = randn(B, N, H, D)
    o = linear_attn_triton(q, k, v, feature_map='focused')
    grads = torch.autograd.grad(o, (q, k, v), do)
    for n, pos in (('_fwd_state_kernel', (k, v)), ('_fwd_out_kernel', (q,)), ('_bwd_q_kernel', (q,)),
                   ('_bwd_kv_kernel', (k, v))):
        assert spies[n].calls, f'{n} not launched'
        for args in spies[n].calls:
            for got, want in zip(args, pos):
                assert got.data_ptr() == want.data_ptr() and got.stride() == want.stride(), f'{n} got a copy'
    qc, kc, vc = (t.detach().contiguous().requires_grad_() for t in (q, k, v))
    o2 = linear_attn_triton(qc, kc, vc, feature_map='focused')
    grads2 = torch.autograd.grad(o2, (qc, kc, vc), do)
    assert torch.equal(o, o2) and all(torch.equal(a, b) for a, b in zip(grads, grads2))


@pytest.mark.parametrize('backend', ['triton', None])
def test_packed_qkv_op_gives_one_gradient_without_a_stack(poison, backend):
    """``linear_attn_qkv(qkv)`` on a packed [B, N, 3, H, D] projection: the bits of ``linear_attn`` on its unbound
    views (kernels in the interpreter, or the CPU reference), and the gradient of qkv comes out of the op as one
    contiguous tensor: no ``aten.stack`` / ``aten.cat`` in the backward (the views' route stacks dq, dk, dv)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from vla_mm.ops.linear_attn import linear_attn_qkv

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.__name__)
            return func(*args, **(kwargs or {}))

    B, N, H, D = 2, 20, 2, 16
    x = randn(B, N, 3 * H * D)
    mask = torch.rand(B, N, generator=torch.Generator().manual_seed(3)) > 0.2
    do = randn(B, N, H, D)
    opts = dict(feature_map='focused', key_padding_mask=mask)
    with kernel_options(backend=backend or 'auto'):
        packed = x.clone().reshape(B, N, 3, H, D).requires_grad_()
        o = linear_attn_qkv(packed, **opts)
        with Ops() as seen:
            g, = torch.autograd.grad(o, packed, do)
        views = x.clone().reshape(B, N, 3, H, D).requires_grad_()
        o2 = linear_attn(*views.unbind(2), **opts)
        g2, = torch.autograd.grad(o2, views, do)
    assert torch.equal(o, o2) and torch.equal(g, g2)
    assert g.is_contiguous() and g.shape == packed.shape
    if backend == 'triton':
        assert not {'stack', 'cat'} & {n.split('.')[0] for n in seen.names}, seen.names
    with pytest.raises(ValueError, match='qkv must be'):
        linear_attn_qkv(x.reshape(B, N, 2, -1, D))


def test_kernel_launch_options(poison):
    (q, k, v), kw = make_inputs((2, 40, 2, 32, 16), F32, {})
    ref = linear_attn_reference(q.double(), k.double(), v.double())
    with kernel_options(launch={'linear_attn': dict(block_n=16, num_warps=2, programs_per_sm_map=1)}):
        plan = la_kernel.plan(q, v, 'elu1', True, None, 1e-6, 3.0, None, 'standard', None, None)
        assert plan.BN == 16 and plan.num_warps == 2
        assert rel_err(linear_attn_triton(q, k, v), ref) < 1e-5
    with pytest.raises(ValueError, match='block_m'):
        with kernel_options(launch={'linear_attn': dict(block_m=16)}):
            linear_attn_triton(q, k, v)


@pytest.mark.parametrize('N, packed, recompute', [(40, False, True), (128, False, False), (40, True, True)])
def test_state_recomputed_in_the_backward_for_short_sequences(monkeypatch, N, packed, recompute):
    """With few tokens a sequence the fp32 state would be a large share of what the op keeps (fp32 K = V = 16:
    over 1/16 of q, k and v's bytes below 91 tokens): the forward saves nothing but its inputs and the backward
    runs F1 again; with more it saves the state. Either way the gradients match float64 (plain and packed op)."""
    from vla_mm.ops.linear_attn import linear_attn_qkv
    calls = []
    real = la_kernel.fwd_state
    monkeypatch.setattr(la_kernel, 'fwd_state', lambda *a: calls.append(1) or real(*a))
    (q, k, v), _ = make_inputs((2, N, 2, 16, 16), F32, {})
    do = randn(2, N, 2, 16, dtype=F32)
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    linear_attn_reference(*leaves).backward(do.double())
    if packed:
        qkv = torch.stack((q, k, v), 2).requires_grad_()
        linear_attn_qkv(qkv, backend='triton').backward(do)
        grads = qkv.grad.unbind(2)
    else:
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        linear_attn_triton(q, k, v).backward(do)
        grads = (q.grad, k.grad, v.grad)
    assert len(calls) == (2 if recompute else 1)
    for g, ref in zip(grads, leaves):
        assert rel_err(g, ref.grad) < 1e-5


def test_default_blocks_per_feature_map():
    """16-bit inputs at K = 64: 64-row blocks at 4 warps plain (session 16), 8 warps with RoPE (session 11), 128
    rows and 8 warps for the focused map; fp32 halves the tile; an explicit block_n / num_warps wins over any."""
    cfg = dict(la_kernel.LAUNCH_DEFAULTS)
    assert la_kernel._blocks(64, 64, False, cfg)[::4] == (64, 4)
    assert la_kernel._blocks(32, 32, False, cfg)[::4] == (64, 4)
    assert la_kernel._blocks(128, 128, False, cfg)[::4] == (64, 8)
    assert la_kernel._blocks(64, 64, False, cfg, focused=True)[::4] == (128, 8)
    assert la_kernel._blocks(64, 64, False, cfg, rope=True, focused=True)[::4] == (64, 8)
    assert la_kernel._blocks(64, 64, False, cfg, rope=True)[::4] == (64, 8)
    assert la_kernel._blocks(32, 32, False, cfg, rope=True)[::4] == (64, 4)
    assert la_kernel._blocks(64, 64, True, cfg, focused=True)[::4] == (64, 4)
    assert la_kernel._blocks(64, 64, False, dict(cfg, block_n=32, num_warps=2), rope=True)[::4] == (32, 2)
    assert la_kernel._Plan(torch.empty(1, 8, 2, 64), torch.empty(1, 8, 2, 64, dtype=torch.bfloat16), 'focused',
                           True, None, 1e-6, 3.0, None, 'none', None, None).BN == 64  # fp32 q: the ieee tile


def test_launch_fallback_when_shared_memory_is_short():
    """A launch whose blocks ask more shared memory than the GPU has (the backward kernels at K = 256 by the
    offline report) retries with one stage, then halves the rows until it fits; the fitting options are kept for
    the next call of the same kernel and blocks; a kernel that never fits raises."""
    import triton
    from types import SimpleNamespace

    class Kernel:
        __name__ = 'probe_kernel_fallback'

        def __init__(self, fits):
            self.fits, self.calls = fits, []

        def __getitem__(self, grid):
            def launch(*args, **kw):
                self.calls.append((kw['num_stages'], kw['BN']))
                if not self.fits(kw):
                    raise triton.runtime.errors.OutOfResources(300000, 232448, 'shared memory')
            return launch

    la_kernel._fallback.cache_clear()

    def plan():
        return SimpleNamespace(BN=128, BK=256, BV=64, num_warps=8, num_stages=2, launch_opts={})
    P = plan()
    k = Kernel(lambda kw: kw['num_stages'] == 1 and kw['BN'] <= 32)
    la_kernel._launch(k, (1,), (), dict(X=1), P)
    assert k.calls == [(2, 128), (1, 128), (1, 64), (1, 32)]
    assert list(P.launch_opts.values()) == [dict(BN=32, BK=256, BV=64, num_warps=8, num_stages=1)]
    for p in (P, plan()):  # the plan's own entry, then a new plan through the fallback table
        k.calls.clear()
        la_kernel._launch(k, (1,), (), dict(X=1), p)
        assert k.calls == [(1, 32)]
    k.calls.clear()
    la_kernel._launch(k, (1,), (), dict(X=2), P)   # other constexprs: their own entry
    assert k.calls == [(2, 128), (1, 128), (1, 64), (1, 32)]
    never = Kernel(lambda kw: False)
    never.__name__ = 'probe_kernel_never_fits'
    with pytest.raises(triton.runtime.errors.OutOfResources):
        la_kernel._launch(never, (1,), (), dict(X=1), plan())
    assert never.calls[-1] == (1, 16)
