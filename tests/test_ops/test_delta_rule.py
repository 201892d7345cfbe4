"""Delta rule core (DeltaNet / Gated DeltaNet): Triton kernels (through the interpreter on CPU) against the
float64 step-by-step reference: outputs, final state and the gradients of q, k, v, beta, g and the initial state.

Fresh random inputs each run (the seed is printed); every buffer the kernels allocate is NaN-poisoned first
(``VLA_OPS_POISON=1``), so an element a kernel forgets to write fails the test.
"""
import pytest
import torch
import torch.nn.functional as F

from vla_mm.ops.delta_rule import delta_rule, delta_rule_chunked, delta_rule_recurrent, delta_rule_triton

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
NAMES = ('q', 'k', 'v', 'beta', 'g', 'initial_state')


@pytest.fixture(autouse=True)
def _poison_and_seed(monkeypatch):
    monkeypatch.setenv('VLA_OPS_POISON', '1')
    seed = torch.seed()
    print(f'seed {seed}')


def rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), 'non-finite values in the kernel output'
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(B, N, H, K, V, gate=True, h0=True, g_kind='random', unit_keys=True):
    q = torch.randn(B, N, H, K, dtype=torch.float64)
    k = torch.randn(B, N, H, K, dtype=torch.float64)
    k = F.normalize(k, dim=-1) if unit_keys else k * 0.3
    v = torch.randn(B, N, H, V, dtype=torch.float64)
    beta = torch.rand(B, N, H, dtype=torch.float64) * 0.9 + 0.05
    g = None
    if gate:
        if g_kind == 'random':
            g = -F.softplus(torch.randn(B, N, H, dtype=torch.float64) * 2)
        elif g_kind == 'strong':
            g = torch.full((B, N, H), -20.0, dtype=torch.float64)
        elif g_kind == 'weak':
            g = -torch.rand(B, N, H, dtype=torch.float64) * 1e-4
        elif g_kind == 'mixed':   # strong and weak decay side by side in one chunk
            g = torch.where(torch.rand(B, N, H) < 0.3, torch.full((B, N, H), -20.0, dtype=torch.float64),
                            -torch.rand(B, N, H, dtype=torch.float64) * 1e-3)
    S = B
    init = torch.randn(S, H, K, V, dtype=torch.float64) if h0 else None
    return [q, k, v, beta, g, init]


def run_both(inputs, dtype, reverse=False, cu_seqlens=None, chunk_size=64, scale=None):
    """Forward + backward of the Triton kernel (in ``dtype``) and of the float64 reference on the same
    (dtype-rounded) inputs with the same random cotangents. Returns dict name -> (triton, reference)."""
    q = inputs[0]
    o_shape = (*q.shape[:3], inputs[2].shape[-1])
    n_seq = q.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    do = torch.randn(o_shape, dtype=torch.float64)
    dht = torch.randn(n_seq, q.shape[2], q.shape[3], inputs[2].shape[-1], dtype=torch.float64)
    results = {}
    for which in ('tri', 'ref'):
        xs = []
        for name, x in zip(NAMES, inputs):
            if x is None:
                xs.append(None)
                continue
            xd = x.to(dtype) if name != 'initial_state' else x.float()
            if which == 'ref':
                xd = xd.double()
            xs.append(xd.detach().requires_grad_())
        fn = delta_rule_triton if which == 'tri' else delta_rule_recurrent
        kw = dict(chunk_size=chunk_size) if which == 'tri' else {}
        o, ht = fn(*xs[:5], scale=scale, initial_state=xs[5], output_final_state=True, cu_seqlens=cu_seqlens,
                   reverse=reverse, **kw)
        assert o.dtype == (dtype if which == 'tri' else torch.float64)
        loss = (o.double() * do).sum() + (ht.double() * dht).sum()
        loss.backward()
        results[which] = {'o': o, 'final_state': ht}
        for name, x in zip(NAMES, xs):
            if x is not None:
                results[which]['d' + name] = x.grad
    return {n: (results['tri'][n], results['ref'][n]) for n in results['ref']}


def check_all(res, dtype, extra_tol=1.0):
    tol = TOL[dtype] * extra_tol
    errs = {n: rel(a, b) for n, (a, b) in res.items()}
    print({n: f'{e:.2e}' for n, e in errs.items()})
    bad = {n: e for n, e in errs.items() if not e < tol}
    assert not bad, f'relative error above {tol}: {bad}'


# Every listed N (1, 7, 63, 197) and chunk size appears; forward and reverse, with and without a gate and an
# initial state, fp32 / bf16 / fp16, head dims that are not powers of two, and V wider than one V block (64).
CASES = [
    # B, N, H, K, V, chunk, gate, h0, reverse, dtype
    (1, 1, 2, 16, 16, 16, True, True, False, torch.float32),
    (2, 7, 2, 16, 16, 16, False, False, True, torch.float32),
    (1, 63, 2, 20, 12, 16, True, True, True, torch.float32),
    (1, 197, 1, 32, 32, 64, True, True, False, torch.float32),
    (2, 197, 1, 16, 32, 32, False, True, True, torch.float32),
    (1, 40, 1, 16, 80, 16, True, False, False, torch.float32),
    (1, 197, 1, 32, 16, 32, False, True, False, torch.bfloat16),
    (1, 63, 2, 16, 16, 64, True, False, True, torch.bfloat16),
    (1, 50, 1, 16, 16, 16, True, True, False, torch.float16),
]


@pytest.mark.parametrize('B,N,H,K,V,chunk,gate,h0,reverse,dtype', CASES)
def test_kernel_matches_reference(B, N, H, K, V, chunk, gate, h0, reverse, dtype):
    inputs = make_inputs(B, N, H, K, V, gate=gate, h0=h0)
    res = run_both(inputs, dtype, reverse=reverse, chunk_size=chunk)
    check_all(res, dtype)


@pytest.mark.parametrize('g_kind,reverse', [('strong', False), ('weak', True), ('mixed', False), ('mixed', True)])
def test_strong_and_weak_decay(g_kind, reverse):
    inputs = make_inputs(1, 70, 2, 16, 16, gate=True, h0=True, g_kind=g_kind)
    res = run_both(inputs, torch.float32, reverse=reverse, chunk_size=32)
    check_all(res, torch.float32)


@pytest.mark.parametrize('reverse,gate', [(False, True), (True, True), (True, False)])
def test_packed_sequences(reverse, gate):
    lens = [7, 1, 63, 30]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    N = sum(lens)
    inputs = make_inputs(1, N, 2, 16, 16, gate=gate, h0=False)
    inputs[5] = torch.randn(len(lens), 2, 16, 16, dtype=torch.float64)
    res = run_both(inputs, torch.float32, reverse=reverse, cu_seqlens=cu, chunk_size=16)
    check_all(res, torch.float32)
    # and packing equals running each sequence on its own (reference)
    q, k, v, beta, g, h0 = inputs
    o_packed, _ = delta_rule_recurrent(q, k, v, beta, g, initial_state=h0, cu_seqlens=cu, reverse=reverse)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_i, _ = delta_rule_recurrent(q[:, a:b], k[:, a:b], v[:, a:b], beta[:, a:b],
                                      None if g is None else g[:, a:b], initial_state=h0[i:i + 1], reverse=reverse)
        torch.testing.assert_close(o_packed[:, a:b], o_i)


def test_unnormalised_keys_and_custom_scale():
    # keys of norm ~1.2 (beta |k|^2 < 2 keeps the recurrence itself stable): still exact, still finite
    inputs = make_inputs(1, 63, 1, 16, 16, gate=True, h0=True, unit_keys=False)
    res = run_both(inputs, torch.float32, chunk_size=32, scale=0.7)
    check_all(res, torch.float32)


def test_reverse_equals_flipped_forward():
    q, k, v, beta, g, h0 = make_inputs(2, 45, 2, 16, 16, gate=True, h0=True)
    args = [x.float() for x in (q, k, v, beta, g)]
    o_r, h_r = delta_rule_triton(*args, initial_state=h0.float(), output_final_state=True, reverse=True,
                                 chunk_size=16)
    flip = [x.flip(1) for x in args]
    o_f, h_f = delta_rule_triton(*flip, initial_state=h0.float(), output_final_state=True, chunk_size=16)
    assert rel(o_r, o_f.flip(1)) < 1e-6 and rel(h_r, h_f) < 1e-6


@pytest.mark.parametrize('gate,reverse', [(True, False), (False, True)])
def test_chunked_reference_matches_recurrent(gate, reverse):
    q, k, v, beta, g, h0 = make_inputs(2, 77, 2, 8, 12, gate=gate, h0=True, g_kind='mixed')
    o1, h1 = delta_rule_recurrent(q, k, v, beta, g, initial_state=h0, output_final_state=True, reverse=reverse)
    o2, h2 = delta_rule_chunked(q, k, v, beta, g, initial_state=h0, output_final_state=True, reverse=reverse,
                                chunk_size=16)
    assert rel(o2, o1) < 1e-12 and rel(h2, h1) < 1e-12


def test_public_op_cpu_dispatch_and_grads():
    q, k, v, beta, g, h0 = [x.float().requires_grad_() for x in make_inputs(1, 9, 2, 8, 8)]
    o, ht = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True)
    o_ref, h_ref = delta_rule_recurrent(q.double(), k.double(), v.double(), beta.double(), g.double(),
                                        initial_state=h0.double(), output_final_state=True)
    assert o.dtype == torch.float32 and ht.shape == (1, 2, 8, 8)
    assert rel(o, o_ref) < 1e-5 and rel(ht, h_ref) < 1e-5
    o.sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in (q, k, v, beta, g, h0))
    o2, none = delta_rule(q, k, v, beta)   # DeltaNet, no final state
    assert none is None and o2.shape == (1, 9, 2, 8)


def test_argument_errors():
    q, k, v, beta, g, h0 = [x.float() for x in make_inputs(2, 5, 2, 8, 8)]
    with pytest.raises(ValueError, match='k must'):
        delta_rule(q, k[..., :4], v, beta)
    with pytest.raises(ValueError, match='v must'):
        delta_rule(q, k, v[:, :3], beta)
    with pytest.raises(ValueError, match='beta must'):
        delta_rule(q, k, v, beta[..., :1])
    with pytest.raises(ValueError, match='g must'):
        delta_rule(q, k, v, beta, g[:, :, :1, None])
    with pytest.raises(ValueError, match='initial_state must'):
        delta_rule(q, k, v, beta, initial_state=h0[:1])
    with pytest.raises(ValueError, match='cu_seqlens'):
        delta_rule(q, k, v, beta, cu_seqlens=torch.tensor([0, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match='dtype|float'):
        delta_rule(q.double(), k.double(), v.double(), beta.double())
    with pytest.raises(ValueError, match='cu_seqlens must rise'):
        delta_rule(q[:1], k[:1], v[:1], beta[:1], cu_seqlens=torch.tensor([0, 3, 4], dtype=torch.int32))


def test_alternative_launch_choices(monkeypatch):
    """Row-by-row inversion at chunk 64 (the default there is the 16x16 block inversion), V split into
    several blocks in the sequential state kernels, and the one-kernel (fused) gradient pass."""
    from vla_mm.ops.delta_rule import chunk
    monkeypatch.setitem(chunk.TUNE, 'prep', 'rows')
    monkeypatch.setitem(chunk.TUNE, 'bv_state', 16)
    monkeypatch.setitem(chunk.TUNE, 'grads', 'fused')
    monkeypatch.setitem(chunk.TUNE, 'inv_prec', 'subst')
    inputs = make_inputs(1, 90, 1, 16, 40, gate=True, h0=True, g_kind='mixed')
    res = run_both(inputs, torch.float32, reverse=True, chunk_size=64)
    check_all(res, torch.float32)
