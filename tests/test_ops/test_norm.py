"""Fused LayerNorm / RMSNorm: Triton kernels (interpreter on CPU) against the float64 reference.

Output and the gradients of x, weight and bias by relative error: < 1e-5 for fp32, < 1e-2 for bf16 / fp16
(inputs or outputs); outputs start NaN-filled in ``poison`` mode where the kernel allocates them.
"""
import pytest
import torch
import torch.nn.functional as F

from vla_mm.ops.norm import MAX_C, add_layer_norm, layer_norm, layer_norm_triton, norm_reference


def _rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), 'non-finite values'
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def _check(shape, dtype=torch.float32, out_dtype=None, rms=False, affine=(True, True), strided=False, eps=1e-6,
           gate=False):
    print(f'seed={torch.seed()}')
    C = shape[-1]
    x = torch.randn(*shape) * 3 + 1.5
    if strided:                                  # rows with a gap: a [M, 2C] buffer, every second half
        x = torch.randn(*shape[:-1], 2 * C)[..., :C] * 3 + 1.5
    named = dict(x=x.to(dtype), weight=torch.randn(C) if affine[0] else None,
                 bias=torch.randn(C) if affine[1] else None,
                 gate=(torch.randn(*shape[:-1], 2 * C)[..., C:] * 2).to(dtype) if gate else None)
    named = {n: t.requires_grad_() for n, t in named.items() if t is not None}
    ins = list(named.values())
    y = layer_norm_triton(named['x'], named.get('weight'), named.get('bias'), eps, rms=rms, out_dtype=out_dtype,
                          gate=named.get('gate'))
    assert y.dtype == (out_dtype or dtype) and y.shape == x.shape
    dy = torch.randn(y.shape).to(y.dtype)
    gr = torch.autograd.grad(y, ins, dy)
    ref = {n: t.detach().double().requires_grad_() for n, t in named.items()}
    y2 = norm_reference(ref['x'], ref.get('weight'), ref.get('bias'), eps, rms, torch.float64, ref.get('gate'))
    gr2 = torch.autograd.grad(y2, list(ref.values()), dy.double())
    assert all(g.dtype == t.dtype for g, t in zip(gr, ins))
    tol = 1e-5 if dtype == torch.float32 and out_dtype in (None, torch.float32) else 1e-2
    errs = {'y': _rel(y, y2), **{f'd{i}': _rel(a, c) for i, (a, c) in enumerate(zip(gr, gr2))}}
    print(errs)
    assert max(errs.values()) < tol, errs


@pytest.mark.parametrize('shape,rms', [((1, 1), False), ((3, 5, 7), False), ((70, 384), False), ((2, 33, 96), True),
                                      ((130, 17), True), ((5, 1000), False)])
def test_norm_fp32(shape, rms):
    _check(shape, rms=rms)


@pytest.mark.parametrize('affine', [(False, False), (True, False), (False, True)])
def test_norm_without_weight_or_bias(affine):
    _check((9, 24), affine=affine)
    _check((9, 24), affine=affine, rms=True)


def test_norm_strided_rows_and_16bit():
    _check((2, 9, 40), strided=True)
    _check((40, 64), dtype=torch.bfloat16)
    _check((40, 64), dtype=torch.float16, rms=True)


@pytest.mark.parametrize('rms', [False, True])
def test_norm_writes_the_autocast_dtype(rms):
    """fp32 x (the residual stream) with a bf16 output: the rounding of the fp32 result, gradients in fp32."""
    _check((70, 96), out_dtype=torch.bfloat16, rms=rms)


@pytest.mark.parametrize('rms,affine,dtype', [(True, (True, False), torch.float32), (True, (True, False), torch.bfloat16),
                                              (False, (True, True), torch.float32), (True, (False, False), torch.float32)])
def test_gated_norm(rms, affine, dtype):
    """times swish(gate) (the mixers' output norm: per-head RMSNorm, fp32 weight, 16-bit x and gate), gate read
    through its row stride; every gradient, the gate's included."""
    _check((3, 11, 32), dtype=dtype, rms=rms, affine=affine, gate=True)


@pytest.mark.parametrize('progs_per_sm', [None, 2])
def test_norm_many_programs_in_backward(monkeypatch, progs_per_sm):
    """The weight / bias partial sums of many programs add up: one row tile per program (1000 rows of 32-row
    tiles, the last one partial), and persistent programs looping over several tiles (3 SMs x 2: 6 programs of
    192 rows, the last 40), contiguous and strided rows, gated."""
    from vla_mm.ops.common import kernel_options
    from vla_mm.ops.norm import kernel
    monkeypatch.setattr(kernel, 'num_sms', lambda device: 3)
    with kernel_options(launch=dict(norm_bwd=dict(progs_per_sm=progs_per_sm))):
        _check((1000, 48))
        _check((1000, 48), strided=True, gate=True, rms=True)


def test_norm_launch_options():
    """``kernel_options(launch={'norm_fwd' / 'norm_bwd': ...})`` (what ops.py --launch A/Bs on the device):
    other tiles, warps, programs per SM and loop stages give the same results; an unknown key is refused."""
    from vla_mm.ops.common import kernel_options
    from vla_mm.ops.norm import kernel
    with kernel_options(launch=dict(norm_fwd=dict(tile=1024, num_warps=2),
                                    norm_bwd=dict(tile=512, num_warps=4, progs_per_sm=1, loop_stages=2))):
        assert kernel.launch_config('norm_bwd') == dict(tile=512, num_warps=4, progs_per_sm=1, loop_stages=2)
        assert kernel._blocks(96, kernel.launch_config('norm_fwd')) == (8, 128, 2)
        _check((300, 96))
    with pytest.raises(ValueError, match=r"launch\['norm_bwd'\] takes"):
        with kernel_options(launch=dict(norm_bwd=dict(rows=4))):
            _check((4, 8))


def test_public_op_cpu_matches_torch_and_checks():
    x = torch.randn(4, 7, 32, requires_grad=True)
    w, b = torch.randn(32, requires_grad=True), torch.randn(32, requires_grad=True)
    y = layer_norm(x, w, b, 1e-6)                     # CPU -> reference
    torch.testing.assert_close(y, F.layer_norm(x, (32,), w, b, 1e-6), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(layer_norm(x, w, None, 1e-6, rms=True), F.rms_norm(x, (32,), w, 1e-6),
                               rtol=1e-6, atol=1e-5)
    assert layer_norm(x, w, b, out_dtype=torch.bfloat16).dtype == torch.bfloat16
    assert layer_norm(torch.zeros(0, 32), w, b).shape == (0, 32)
    with pytest.raises(ValueError, match='weight'):
        layer_norm(x, torch.randn(31))
    with pytest.raises(ValueError, match='C = '):
        layer_norm(torch.randn(2, MAX_C + 1))
    with pytest.raises(ValueError, match='out_dtype'):
        layer_norm(x, out_dtype=torch.int32)
    with pytest.raises(ValueError, match='gate'):
        layer_norm(x, w, gate=torch.randn(4, 7, 31))
    g = torch.randn(4, 7, 32)
    torch.testing.assert_close(layer_norm(x, w, None, 1e-6, rms=True, gate=g),
                               F.rms_norm(x, (32,), w, 1e-6) * F.silu(g), rtol=1e-6, atol=1e-5)


def test_norm_compiles_fullgraph():
    x = torch.randn(3, 5, 16, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    f = torch.compile(lambda t, u: layer_norm(t, u, None, 1e-6) * 2, fullgraph=True, backend='aot_eager')
    y = f(x, w)
    torch.testing.assert_close(y, layer_norm(x, w, None, 1e-6) * 2)
    y.sum().backward()
    assert x.grad is not None and w.grad is not None


@pytest.mark.parametrize('x_dtype, r_dtype, out_dtype, rms, with_ds, strided', [
    (torch.bfloat16, torch.float32, torch.bfloat16, False, True, False),   # a block under autocast
    (torch.float32, torch.float32, None, False, False, True),
    (torch.float32, torch.bfloat16, None, True, True, False),
    (torch.float16, torch.float16, None, True, True, False)])
def test_add_layer_norm_matches_float64(x_dtype, r_dtype, out_dtype, rms, with_ds, strided):
    """``add_layer_norm(x, residual)`` = ``s = x + residual`` then the norm of s, in one pass (kernels in the
    interpreter): y and s, and the gradients of x, residual (each in its dtype), weight and bias against float64,
    with a gradient reaching s directly (the next residual add) or not."""
    from vla_mm.ops.common import kernel_options
    g = torch.Generator().manual_seed(11)
    M, C = 70, 96
    base = torch.randn(M, 2 * C, generator=g)
    x = (base[:, :C] if strided else base[:, :C].contiguous()).to(x_dtype).requires_grad_()
    r = (torch.randn(M, C, generator=g) * 3 + 1).to(r_dtype).requires_grad_()
    w = torch.randn(C, generator=g).requires_grad_()
    b = None if rms else torch.randn(C, generator=g).requires_grad_()
    ins = [t for t in (x, r, w, b) if t is not None]
    with kernel_options(backend='triton', poison=True):
        y, s = add_layer_norm(x, r, w, b, 1e-6, rms=rms, out_dtype=out_dtype)
    assert s.dtype == torch.promote_types(x_dtype, r_dtype) and y.dtype == (out_dtype or s.dtype)
    dy = torch.randn(y.shape, generator=g).to(y.dtype)
    ds = torch.randn(s.shape, generator=g).to(s.dtype) if with_ds else None
    outs, cots = ((y, s), (dy, ds)) if with_ds else ((y,), (dy,))
    grads = torch.autograd.grad(outs, ins, cots)
    assert [t.dtype for t in grads] == [t.dtype for t in ins]
    ref = [t.detach().double().requires_grad_() for t in ins]
    s64 = ref[0] + ref[1]
    y64 = norm_reference(s64, ref[2], None if rms else ref[3], 1e-6, rms, torch.float64)
    grads64 = torch.autograd.grad((y64, s64) if with_ds else (y64,), ref, [c.double() for c in cots])
    tol = 1e-5 if {x_dtype, r_dtype} == {torch.float32} else 1e-2
    errs = {n: _rel(a, c) for n, a, c in zip(['y', 's', 'dx', 'dres', 'dw', 'db'],
                                              [y, s, *grads], [y64, s64, *grads64])}
    assert max(errs.values()) < tol, errs
    with pytest.raises(ValueError, match='residual must have the shape'):
        add_layer_norm(x, r[:1], w)


@pytest.mark.parametrize('C, progs_per_sm, rows_per_prog', [
    (48, 'default', 32), (384, 'default', 6), (2048, 'default', 6),
    (48, None, 64), (384, None, 8), (2048, None, 4), (4096, None, 4)])
def test_backward_programs_by_width(monkeypatch, C, progs_per_sm, rows_per_prog):
    """The backward grid for 67 rows on 3 SMs. Default (persistent, 4 programs per SM over 2048-element tiles,
    1024 at 256 < C <= 512): at most 12 programs, each a whole number of row tiles (32 rows at C = 48, three 2-row
    tiles at C = 384, six 1-row tiles at C = 2048). One tile per program (``progs_per_sm=None``, 4096-element
    tiles): 64 rows at C = 48, 8 at C = 384, and at least MIN_ROWS_BWD rows where a tile holds fewer (C > 1024),
    so the partial weight / bias rows never outnumber a quarter of x's rows. Results checked against float64."""
    from vla_mm.ops.common import kernel_options
    from vla_mm.ops.norm import kernel
    grids = []
    real = kernel._ln_bwd_kernel

    class Spy:
        def __getitem__(self, grid):
            grids.append(grid)
            return real[grid]
    monkeypatch.setattr(kernel, '_ln_bwd_kernel', Spy())
    monkeypatch.setattr(kernel, 'num_sms', lambda device: 3)
    M = 67
    launch = {} if progs_per_sm == 'default' else dict(norm_bwd=dict(progs_per_sm=None, tile=4096))
    with kernel_options(launch=launch):
        _check((M, C))
    assert grids == [(-(-M // rows_per_prog),)], grids
    if progs_per_sm is None:
        assert rows_per_prog >= kernel.MIN_ROWS_BWD
    else:
        assert grids[0][0] <= 4 * 3


@pytest.mark.parametrize('eager_path', ['function', 'custom_op'])
def test_backward_keeps_only_what_it_reads(eager_path):
    """The Triton backward of ``add_layer_norm`` reads s, the statistics, weight and bias: the branch x, the
    residual and y are kept as one-element stand-ins (session 13: the kept bf16 branch put a fused-norm ViT-S
    0.5 GiB over torch's norm at 224 px). ``layer_norm`` keeps x but not y. Gradients still match float64, also
    with no gradient reaching y."""
    from vla_mm.ops.common import kernel_options
    g = torch.Generator().manual_seed(3)
    M, C = 40, 64
    x = torch.randn(M, C, generator=g).to(torch.bfloat16).requires_grad_()
    r = torch.randn(M, C, generator=g).requires_grad_()
    w, b = torch.randn(C, generator=g).requires_grad_(), torch.randn(C, generator=g).requires_grad_()
    kept = []

    def pack(t):
        kept.append(t)
        return t
    with kernel_options(backend='triton', eager_path=eager_path), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, s = add_layer_norm(x, r, w, b, 1e-6, out_dtype=torch.bfloat16)
        n_add = len(kept)
        y2 = layer_norm(s, w, b, 1e-6, out_dtype=torch.bfloat16)
    big = [t for t in kept if t.untyped_storage().nbytes() >= M * C * 2]
    ptrs = {t.untyped_storage().data_ptr() for t in big[:n_add]}
    assert s.untyped_storage().data_ptr() in ptrs
    assert not ptrs & {x.untyped_storage().data_ptr(), r.untyped_storage().data_ptr(),
                       y.untyped_storage().data_ptr()}
    ptrs2 = {t.untyped_storage().data_ptr() for t in kept[n_add:] if t.untyped_storage().nbytes() >= M * C * 2}
    assert ptrs2 == {s.untyped_storage().data_ptr()}   # layer_norm: x (= s) only, not y2
    dy2 = torch.randn(y2.shape, generator=g).to(y2.dtype)
    grads = torch.autograd.grad(y2, [x, r, w, b], dy2)   # no gradient reaches y: its zeros from the stand-in
    ref = [t.detach().double().requires_grad_() for t in (x, r, w, b)]
    s64 = ref[0] + ref[1]
    grads64 = torch.autograd.grad(norm_reference(s64, ref[2], ref[3], 1e-6, False, torch.float64), ref, dy2.double())
    errs = [_rel(a, c) for a, c in zip(grads, grads64)]
    assert max(errs) < 2e-2, errs
