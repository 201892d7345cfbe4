"""Delta rule core (DeltaNet / Gated DeltaNet): Triton kernels (through the interpreter on CPU) against the
float64 step-by-step reference: outputs, final state and the gradients of q, k, v, beta, g and the initial state.

Fresh random inputs each run (the seed is printed); every buffer the kernels allocate is NaN-poisoned first
(``kernel_options(poison=True)``), so an element a kernel forgets to write fails the test. ``test_no_access_outside_buffers``
also puts every input, output and scratch buffer between guard bytes: a read outside a buffer brings NaN into
the results, a write outside changes the guard.
"""
import pytest
import torch
import torch.nn.functional as F

from tests.test_ops.kernel_checks import poison  # noqa: F401 (an autouse fixture)
from tests.test_ops.kernel_checks import rel_err as rel
from vla_mm.ops.delta_rule import chunk, delta_rule, delta_rule_chunked, delta_rule_recurrent, delta_rule_triton

# bf16: the default 16-bit residuals (W, U~, U and the chunk states rounded to bf16, as fla keeps them) about double
# every error against float64: medians 6-7e-3 at K = 96, tails to 1.02e-2 over 24 seeds and two CI runs (fp32
# residuals: medians 3-4e-3, held to 1e-2 by test_16bit_residuals)
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}
NAMES = ('q', 'k', 'v', 'beta', 'g', 'initial_state')


def make_inputs(B, N, H, K, V, gate=True, h0=True, g_kind='random', unit_keys=True, S=None):
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
    init = torch.randn(B if S is None else S, H, K, V, dtype=torch.float64) if h0 else None
    return [q, k, v, beta, g, init]


def run_both(inputs, dtype, reverse=False, cu_seqlens=None, scale=None, place=None):
    """Forward + backward of the Triton kernel (in ``dtype``) and of the float64 reference on the same
    (dtype-rounded) inputs with the same random cotangents. Returns dict name -> (triton, reference).
    ``place(tensor)`` puts each kernel input (and cotangent) where the test wants it (default: as it is)."""
    place = place or (lambda t: t)
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
            xd = xd.double() if which == 'ref' else place(xd)
            xs.append(xd.detach().requires_grad_())
        fn = delta_rule_triton if which == 'tri' else delta_rule_recurrent
        cu = cu_seqlens if which == 'ref' or cu_seqlens is None else place(cu_seqlens)
        o, ht = fn(*xs[:5], scale=scale, initial_state=xs[5], output_final_state=True, cu_seqlens=cu,
                   reverse=reverse)
        assert o.dtype == (dtype if which == 'tri' else torch.float64)
        if which == 'tri':
            torch.autograd.backward([o, ht], [place(do.to(dtype)), place(dht.float())])
        else:
            torch.autograd.backward([o, ht], [do.to(dtype).double(), dht.float().double()])
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


# Chunks are 64 tokens: N = 1, 63, 64, 65, 130 and 197 give one partial chunk up to four chunks; forward and
# reverse, with and without a gate and an initial state, fp32 / bf16 / fp16, head dims that are not powers of
# two, V wider than one V block (64), and K above 64 (16-bit inputs run _dstate over K in two halves there).
CASES = [
    # B, N, H, K, V, gate, h0, reverse, dtype
    (1, 1, 2, 16, 16, True, True, False, torch.float32),
    (2, 63, 1, 20, 12, True, True, True, torch.float32),
    (1, 64, 1, 16, 80, False, False, True, torch.float32),
    (1, 197, 1, 32, 32, True, True, False, torch.float32),
    (2, 65, 1, 16, 32, False, True, True, torch.float32),
    (1, 130, 1, 32, 16, False, True, False, torch.bfloat16),
    (1, 63, 2, 16, 16, True, False, True, torch.bfloat16),
    (1, 65, 1, 96, 48, True, True, False, torch.bfloat16),
    (1, 50, 1, 16, 16, True, True, False, torch.float16),
]


@pytest.mark.parametrize('B,N,H,K,V,gate,h0,reverse,dtype', CASES)
def test_kernel_matches_reference(B, N, H, K, V, gate, h0, reverse, dtype):
    inputs = make_inputs(B, N, H, K, V, gate=gate, h0=h0)
    res = run_both(inputs, dtype, reverse=reverse)
    check_all(res, dtype)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_dots_in_the_input_dtype(dtype):
    """``precision='input'`` (every kernel's dots on operands cast to the 16-bit input dtype, fp32 accumulation:
    a launch option, faster than tf32 but faulting on Hopper in ``_dstate`` at fp16 K = 96 N = 1) stays within the 16-bit tolerance of float64, forward and every
    gradient, over two chunks with a gate and an initial state at K = 96. bf16 runs as 'bf16_emu' here (operands
    rounded to bf16, fp32 products: the interpreter's bf16 ``tl.dot`` is wrong, triton 3.8); ops.py --check
    covers the bf16 tensor-core dots on the GPU."""
    from vla_mm.ops.common import kernel_options
    inputs = make_inputs(1, 80, 1, 96, 48, gate=True, h0=True)
    with kernel_options(launch={'delta_rule_' + n: dict(precision='input') for n in chunk.LAUNCH}):
        res = run_both(inputs, dtype)
    check_all(res, dtype)


@pytest.mark.parametrize('dtype,reverse,cu,gate', [(torch.float32, True, [0, 1, 70, 130], True),
                                                  (torch.bfloat16, False, None, False)])
def test_prep_whole_chunk_products(monkeypatch, dtype, reverse, cu, gate):
    """``delta_rule_prep``'s ``tile_w``: W and U~ as whole-chunk products from T read back after a barrier (the
    kernel gets TILE_W; off by default until timed): forward and every gradient within tolerance of float64,
    gated or not, packed (a one-token sequence, a partial chunk) and reversed, V over two V blocks."""
    from vla_mm.ops.common import kernel_options
    S = None if cu is None else len(cu) - 1
    inputs = make_inputs(1 if cu else 2, 130, 2, 24, 80, gate=gate, h0=True, S=S)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    for tile_w in (None, True):
        log = []
        monkeypatch.setattr(chunk, '_prep_kernel', _Recorder(chunk._prep_kernel, '_prep_kernel', log))
        launch = {} if tile_w is None else {'delta_rule_prep': dict(tile_w=tile_w)}
        with kernel_options(launch=launch):
            res = run_both(inputs, dtype, reverse=reverse, cu_seqlens=cu_t)
        monkeypatch.undo()
        check_all(res, dtype)
        assert [kw['TILE_W'] for _, kw in log] == [chunk.PREP_TILE_W if tile_w is None else tile_w]


@pytest.mark.parametrize('dtype,reverse,cu', [(torch.bfloat16, False, None), (torch.float16, True, [0, 70, 130])])
def test_16bit_residuals(dtype, reverse, cu):
    """``delta_rule_residuals``: W, U~, U and the chunk states kept in the 16-bit input dtype (``'input'``, the
    default: fla's choice, half the forward's intermediate traffic) or in fp32, on the same inputs and cotangents:
    forward and every gradient within tolerance of float64 (gated, initial state, packed / reverse, three chunks),
    fp32 residuals within 1e-2 and, in bf16, closer to float64 than the bf16 ones; fp32 inputs keep fp32 ones."""
    from vla_mm.ops.common import kernel_options
    inputs = make_inputs(1, 130, 2, 32, 48, gate=True, h0=True, S=None if cu is None else len(cu) - 1)
    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    rng, errs = torch.get_rng_state(), {}
    for kept in ('input', 'fp32'):
        torch.set_rng_state(rng)
        with kernel_options(delta_rule_residuals=kept):
            res = run_both(inputs, dtype, reverse=reverse, cu_seqlens=cu_t)
            metas = {dt: [m[1] for m in chunk.residual_meta(inputs[0].to(dt), inputs[2].to(dt), inputs[4], cu_t)]
                     for dt in (dtype, torch.float32)}
            _, saved = chunk.delta_rule_fwd(*(x.to(dtype) for x in inputs[:5]), 0.5, None, False, cu_t, reverse)
        check_all(res, dtype, extra_tol=1.0 if kept == 'input' else 1e-2 / TOL[dtype])
        errs[kept] = sum(rel(a, b) for a, b in res.values())
        rt = dtype if kept == 'input' else torch.float32
        assert metas[dtype] == [torch.float64, torch.float32, rt, rt, rt]
        assert metas[torch.float32] == [torch.float64] + [torch.float32] * 4
        assert [t.dtype for t in saved] == metas[dtype]
    if dtype == torch.bfloat16:
        assert errs['fp32'] < errs['input'], errs
    with pytest.raises(ValueError, match='delta_rule_residuals'):
        with kernel_options(delta_rule_residuals='bf16'):
            pass


@pytest.mark.parametrize('K,V,dtype,reverse,cu', [(96, 48, torch.float32, False, None),
                                                   (20, 40, torch.float32, True, [0, 1, 66, 100]),
                                                   (96, 48, torch.float16, False, None)])
def test_dstate_with_k_in_two_halves(K, V, dtype, reverse, cu):
    """``split_k`` (``_dstate`` over K in two halves, two [BK / 2, BV] state tiles: the K <= 64 tile shapes at
    K = 96 / 128, the candidate for its faulting tf32 build) gives every gradient within tolerance of float64:
    K = 96 (halves of 64, the second partly masked), K = 20 (halves of 16), gated, initial and final state,
    reverse with packed sequences (a one-token sequence among them)."""
    from vla_mm.ops.common import kernel_options
    inputs = make_inputs(1, 100, 1, K, V, gate=True, h0=True, S=None if cu is None else len(cu) - 1)
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    with kernel_options(launch={'delta_rule_dstate': dict(split_k=True)}):
        res = run_both(inputs, dtype, reverse=reverse, cu_seqlens=cu)
    check_all(res, dtype)


@pytest.mark.parametrize('K,V,dtype,reverse,cu,gate', [(20, 80, torch.float32, True, [0, 1, 66, 130], True),
                                                        (96, 48, torch.bfloat16, False, None, True),
                                                        (16, 16, torch.float32, False, [0, 64, 65, 130], False)])
def test_dstate_with_chunk_local_terms_precomputed(monkeypatch, K, V, dtype, reverse, cu, gate):
    """``local`` (``_dlocal_kernel`` computes _dstate's carry-free terms in parallel, into the dU and dh
    buffers _dstate then reads and overwrites): every gradient within tolerance of float64, reversed packed
    sequences with a one-token one, two V blocks, K in two halves (16-bit K = 96), no gate; every buffer
    guarded: nothing read or written outside it."""
    from vla_mm.ops.common import kernel_options
    guard = Guarded()
    monkeypatch.setattr(chunk, 'alloc', guard.poisoned)
    launched = []
    monkeypatch.setattr(chunk, '_dlocal_kernel', _Recorder(chunk._dlocal_kernel, '_dlocal_kernel', launched))
    inputs = make_inputs(1, 130, 1, K, V, gate=gate, h0=True, S=None if cu is None else len(cu) - 1)
    cu = None if cu is None else torch.tensor(cu, dtype=torch.int32)
    with kernel_options(launch={'delta_rule_dstate': dict(local=True)}):
        res = run_both(inputs, dtype, reverse=reverse, cu_seqlens=cu, place=guard.place)
    assert [n for n, _ in launched] == ['_dlocal_kernel']
    assert launched[0][1]['KS'] == (2 if dtype != torch.float32 and K > 64 else 1)
    assert guard.check() == [], 'a kernel wrote outside its buffer'
    check_all(res, dtype)


@pytest.mark.parametrize('g_kind,reverse', [('strong', False), ('weak', True), ('mixed', False), ('mixed', True)])
def test_strong_and_weak_decay(g_kind, reverse):
    inputs = make_inputs(1, 100, 1, 16, 16, gate=True, h0=True, g_kind=g_kind)
    res = run_both(inputs, torch.float32, reverse=reverse)
    check_all(res, torch.float32)


@pytest.mark.parametrize('reverse,gate', [(False, True), (True, True), (True, False)])
def test_packed_sequences(reverse, gate):
    lens = [7, 1, 70, 30]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    inputs = make_inputs(1, sum(lens), 2, 16, 16, gate=gate, S=len(lens))
    res = run_both(inputs, torch.float32, reverse=reverse, cu_seqlens=cu)
    check_all(res, torch.float32)
    # and packing equals running each sequence on its own (reference)
    q, k, v, beta, g, h0 = inputs
    o_packed, _ = delta_rule_recurrent(q, k, v, beta, g, initial_state=h0, cu_seqlens=cu, reverse=reverse)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_i, _ = delta_rule_recurrent(q[:, a:b], k[:, a:b], v[:, a:b], beta[:, a:b],
                                      None if g is None else g[:, a:b], initial_state=h0[i:i + 1], reverse=reverse)
        torch.testing.assert_close(o_packed[:, a:b], o_i)


class Guarded:
    """Allocates tensors as views into the middle of byte buffers whose rest is 0xFF (a NaN in every float
    dtype): ``check()`` lists the buffers whose guard bytes changed (a write outside the tensor)."""

    PAD = 4096   # elements of guard on each side

    def __init__(self):
        self.bufs = []

    def alloc(self, shape, dtype, device=None):
        n = 1
        for s in shape:
            n *= s
        es = torch.empty((), dtype=dtype).element_size()
        raw = torch.full(((n + 2 * self.PAD) * es,), 0xFF, dtype=torch.uint8)
        self.bufs.append((raw, self.PAD * es, n * es, tuple(shape), dtype))
        return raw[self.PAD * es:(self.PAD + n) * es].view(dtype).view(*shape)

    def place(self, t):
        out = self.alloc(t.shape, t.dtype)
        out.copy_(t)
        return out

    def poisoned(self, shape, dtype, device=None):
        out = self.alloc(shape, dtype)
        return out.fill_(float('nan')) if dtype.is_floating_point else out

    def check(self):
        bad = []
        for raw, lo, n, shape, dtype in self.bufs:
            guard = torch.cat([raw[:lo], raw[lo + n:]])
            if not bool((guard == 0xFF).all()):
                bad.append((shape, dtype, int((guard != 0xFF).sum())))
        return bad


@pytest.mark.parametrize('reverse,packed', [(False, False), (True, True)])
def test_no_access_outside_buffers(monkeypatch, reverse, packed):
    """The crash of issue 15 (Gated DeltaNet, bf16, K = 96 / V = 80: an illegal memory access on the GPU) at
    its smallest shape: two chunks (N = 65), two V blocks, K above 64. Every input, cotangent, table and
    scratch buffer sits between guard bytes: no kernel may read or write outside its tensor, and the outputs
    and gradients still match float64. (The GPU fault itself came from the compiled tf32 dots, which the
    interpreter does not model; the guard rules out the kernels' own indexing as its cause.)"""
    guard = Guarded()
    monkeypatch.setattr(chunk, 'alloc', guard.poisoned)
    tables = chunk._tables

    def guarded_tables(*a):
        par, grid, seq, S, varlen = tables(*a)
        par, seq = (tuple(guard.place(t) if torch.is_tensor(t) else t for t in x) for x in (par, seq))
        return par, grid, seq, S, varlen
    monkeypatch.setattr(chunk, '_tables', guarded_tables)
    cu = torch.tensor([0, 1, 64, 65], dtype=torch.int32) if packed else None
    inputs = make_inputs(1, 65, 1, 96, 80, gate=True, h0=True, S=3 if packed else 1)
    res = run_both(inputs, torch.bfloat16, reverse=reverse, cu_seqlens=cu, place=guard.place)
    assert len(guard.bufs) > 20
    assert guard.check() == [], 'a kernel wrote outside its buffer'
    check_all(res, torch.bfloat16)


def test_guard_detects_out_of_bounds_writes():
    """The guard itself: a write one element past a tensor is found."""
    guard = Guarded()
    t = guard.alloc((3, 5), torch.bfloat16)
    t.fill_(1.0)
    assert guard.check() == []
    torch.as_strided(t, (16,), (1,))[15] = 2.0
    assert guard.check() == [((3, 5), torch.bfloat16, 2)]


class _Recorder:
    """Stands in for a @triton.jit kernel: records the launch keyword arguments, then launches."""

    def __init__(self, kernel, name, log):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.log.append((self.name, kw))
            return self.kernel[grid](*args, **kw)
        return launch


KERNELS = ('_prep_kernel', '_state_kernel', '_out_kernel', '_dstate_kernel', '_grads_wy_kernel', '_grads_qk_kernel')


def _launches(monkeypatch, dtype, K, **options):
    from vla_mm.ops.common import kernel_options
    log = []
    for name in KERNELS:
        monkeypatch.setattr(chunk, name, _Recorder(getattr(chunk, name), name, log))
    q, k, v, beta, g = [x.to(dtype).requires_grad_() for x in make_inputs(1, 3, 1, K, 16, h0=False)[:5]]
    with kernel_options(**options):
        o, _ = delta_rule_triton(q, k, v, beta, g)
        o.float().sum().backward()
    return log


def test_16bit_inputs_above_k64_run_dstate_over_k_halves(monkeypatch):
    """The fix of issue 15's crash: 16-bit inputs at 64 < K <= 128 launch ``_dstate`` with tf32 dots over K in two
    halves (its full-K tf32 build faults on Hopper at K = 128, session 11; the halves ran clean and within float64
    tolerance on every reached K = 96 / 128 case of the GPU sweep, session 12, where 16-bit dots over halves
    faulted at fp16 K = 96 N = 1) and every other kernel with tf32 at full K; 'ieee' and full K everywhere above
    K = 128 (a 256-wide K block, never run with tf32 on the GPU); full K at K <= 64 (where ``_out`` takes 16-bit
    operands instead); fp32 inputs 'ieee'."""
    for dtype, K, want_prec, want_ks in [
            (torch.bfloat16, 96, 'tf32', 2), (torch.float16, 65, 'tf32', 2), (torch.bfloat16, 128, 'tf32', 2),
            (torch.bfloat16, 129, 'ieee', 1), (torch.bfloat16, 64, 'tf32', 1), (torch.float32, 96, 'ieee', 1)]:
        log = _launches(monkeypatch, dtype, K)
        monkeypatch.undo()
        assert sorted(n for n, _ in log) == sorted(KERNELS)
        want = dict.fromkeys(KERNELS, want_prec)
        if dtype != torch.float32 and K <= chunk.MAX_TF32_K:
            want['_out_kernel'] = chunk.dot_prec('bf16')
        assert {n: kw['PREC'] for n, kw in log} == want, (dtype, K)
        assert dict(log)['_dstate_kernel']['KS'] == want_ks, (dtype, K)
    log = _launches(monkeypatch, torch.bfloat16, 96, launch={'delta_rule_dstate': dict(split_k=False)})
    monkeypatch.undo()
    assert dict(log)['_dstate_kernel']['KS'] == 1


def test_dot_precision_per_kernel_for_16bit_inputs(monkeypatch):
    """``launch={'delta_rule_<kernel>': {'precision': ...}}`` sets one kernel's dots (the device bisection of the
    K > 64 fault: tf32 kernel by kernel); other kernels keep the default, fp32 inputs keep 'ieee', a value
    outside PRECISIONS is refused."""
    log = _launches(monkeypatch, torch.bfloat16, 96, launch={'delta_rule_dstate': dict(precision='tf32'),
                                                             'delta_rule_state': dict(precision='ieee')})
    monkeypatch.undo()
    prec = {n: kw['PREC'] for n, kw in log}
    assert (prec.pop('_dstate_kernel'), prec.pop('_state_kernel')) == ('tf32', 'ieee'), log
    assert prec == {'_prep_kernel': 'tf32', '_out_kernel': 'tf32', '_grads_wy_kernel': 'tf32',
                    '_grads_qk_kernel': 'tf32'}, log
    log = _launches(monkeypatch, torch.float32, 96, launch={'delta_rule_state': dict(precision='tf32')})
    monkeypatch.undo()
    assert {kw['PREC'] for _, kw in log} == {'ieee'}
    with pytest.raises(ValueError, match="precision'\\] must be one of"):
        _launches(monkeypatch, torch.bfloat16, 96, launch={'delta_rule_out': dict(precision='fp8')})


def test_launch_settings_are_constants_overridable_per_call(monkeypatch):
    log = _launches(monkeypatch, torch.float32, 16, launch={'delta_rule_state': dict(num_warps=2)})
    warps = {n: kw['num_warps'] for n, kw in log}
    assert warps['_state_kernel'] == 2 and warps['_prep_kernel'] == chunk.LAUNCH['prep']['num_warps']
    assert all(kw['num_stages'] == 1 for _, kw in log)
    # _prep's warps follow the head size for 16-bit inputs (2 at K <= 64), unless overridden
    for dtype, K, want in [(torch.bfloat16, 64, chunk.PREP_WARPS_SMALL_K), (torch.bfloat16, 96, 8),
                           (torch.float32, 64, 8)]:
        log = _launches(monkeypatch, dtype, K)
        monkeypatch.undo()
        assert dict((n, kw['num_warps']) for n, kw in log)['_prep_kernel'] == want, (dtype, K)
    log = _launches(monkeypatch, torch.bfloat16, 64, launch={'delta_rule_prep': dict(num_warps=4)})
    assert dict((n, kw['num_warps']) for n, kw in log)['_prep_kernel'] == 4
    monkeypatch.undo()
    # _out at 16-bit K <= 64: OUT_WARPS_SMALL_K warps, dots on 16-bit operands; above, or fp32, the table's
    for dtype, K, want in [(torch.bfloat16, 64, (chunk.OUT_WARPS_SMALL_K, chunk.dot_prec('bf16'))),
                           (torch.float16, 32, (chunk.OUT_WARPS_SMALL_K, chunk.dot_prec('fp16'))),
                           (torch.bfloat16, 96, (8, 'tf32')), (torch.float32, 64, (8, 'ieee'))]:
        log = _launches(monkeypatch, dtype, K)
        monkeypatch.undo()
        kw = dict(log)['_out_kernel']
        assert (kw['num_warps'], kw['PREC']) == want, (dtype, K, kw)
    # the sequential kernels: two stages for 16-bit K <= 64; _dstate's chunk-local terms from _dlocal for 16-bit
    # K <= DSTATE_LOCAL_MAX_K; either overridable
    for dtype, K, stages, local in [(torch.bfloat16, 64, chunk.SEQ_STAGES_SMALL_K, True),
                                    (torch.float16, 128, 1, True), (torch.bfloat16, 192, 1, False),
                                    (torch.float32, 64, 1, False)]:
        st, ds = chunk._launch('state', dtype, K), chunk._launch('dstate', dtype, K)
        assert (st['num_stages'], ds['num_stages'], ds['LOCAL']) == (stages, stages, local), (dtype, K)
    from vla_mm.ops.common import kernel_options
    with kernel_options(launch={'delta_rule_dstate': dict(local=False, num_stages=3)}):
        ds = chunk._launch('dstate', torch.bfloat16, 64)
    assert (ds['LOCAL'], ds['num_stages']) == (False, 3)
    # forced above its K limit, local is refused (its parallel kernel ran out of memory at K = 256 on the GPU)
    with kernel_options(launch={'delta_rule_dstate': dict(local=True)}):
        assert chunk._launch('dstate', torch.float32, chunk.DSTATE_LOCAL_MAX_K)['LOCAL']
        with pytest.raises(ValueError, match='local'):
            chunk._launch('dstate', torch.float32, chunk.DSTATE_LOCAL_MAX_K + 64)


def test_sequential_kernels_take_a_v_block(monkeypatch):
    """``block_v`` sets the V block of ``_state`` / ``_dstate`` (the device A/B of their register pressure at
    K = 128): 32 where the default is 16 (few programs), and results stay within float64 tolerance with V = 48
    in a full and a half-masked 32-wide block; a V block that is not a power of two >= 16 is refused."""
    from vla_mm.ops.common import kernel_options
    launch = {'delta_rule_state': dict(block_v=32), 'delta_rule_dstate': dict(block_v=32)}
    assert chunk._bv_state(1, 2, 48) == 16
    log = _launches(monkeypatch, torch.float32, 16, launch=launch)
    monkeypatch.undo()
    bv = {n: kw['BV'] for n, kw in log}
    assert bv['_state_kernel'] == bv['_dstate_kernel'] == 32
    inputs = make_inputs(1, 70, 2, 16, 48, gate=True, h0=True)
    with kernel_options(launch=launch):
        check_all(run_both(inputs, torch.float32), torch.float32)
    with pytest.raises(ValueError, match='power of two'):
        _launches(monkeypatch, torch.float32, 16, launch={'delta_rule_state': dict(block_v=24)})


def test_kernel_limits_are_value_errors_before_any_launch(monkeypatch):
    monkeypatch.setattr(chunk, 'DeltaRuleFunction', None)   # any launch attempt would fail differently
    big = torch.zeros(()).expand(2 ** 10, 2 ** 12, 4, 256)  # B * N * H * K = 2**32 without memory
    for shape_q, shape_v, match in [((1, 4, 1, 257), (1, 4, 1, 8), 'head dim K'),
                                    ((1, 4, 1, 8), (1, 4, 1, 0), 'head dim V'),
                                    (big.shape, (2 ** 10, 2 ** 12, 4, 8), '2\\*\\*31'),
                                    ((1, 65535 * 64 + 1, 1, 1), (1, 65535 * 64 + 1, 1, 1), 'grid limit')]:
        q = torch.zeros(()).expand(*shape_q)
        v = torch.zeros(()).expand(*shape_v)
        beta = torch.zeros(()).expand(*shape_q[:3])
        with pytest.raises(ValueError, match=match):
            delta_rule_triton(q, q, v, beta)


def test_unnormalised_keys_and_custom_scale():
    # keys of norm ~1.2 (beta |k|^2 < 2 keeps the recurrence itself stable): still exact, still finite
    inputs = make_inputs(1, 70, 1, 16, 16, gate=True, h0=True, unit_keys=False)
    res = run_both(inputs, torch.float32, scale=0.7)
    check_all(res, torch.float32)


def test_reverse_equals_flipped_forward():
    q, k, v, beta, g, h0 = make_inputs(2, 70, 1, 16, 16, gate=True, h0=True)
    args = [x.float() for x in (q, k, v, beta, g)]
    o_r, h_r = delta_rule_triton(*args, initial_state=h0.float(), output_final_state=True, reverse=True)
    flip = [x.flip(1) for x in args]
    o_f, h_f = delta_rule_triton(*flip, initial_state=h0.float(), output_final_state=True)
    assert rel(o_r, o_f.flip(1)) < 1e-6 and rel(h_r, h_f) < 1e-6


@pytest.mark.parametrize('gate,reverse,cu', [(True, False, None), (False, True, None), (True, True, [0, 1, 1, 40, 77]),
                                            (False, False, [0, 76, 77])])
def test_chunked_reference_matches_recurrent(gate, reverse, cu):
    """The CPU path (chunked UT form, batched over B) is the step-by-step recurrence: output, final state and
    every gradient in float64, dense and packed (with empty and one-token sequences)."""
    cus = torch.tensor(cu) if cu else None
    ins = make_inputs(1 if cu else 2, 77, 2, 8, 12, gate=gate, h0=True, g_kind='mixed', S=len(cu) - 1 if cu else None)
    leaves = [x.requires_grad_() for x in ins if x is not None]
    got = []
    for f, kw in ((delta_rule_recurrent, {}), (delta_rule_chunked, dict(chunk_size=16))):
        o, h = f(*ins[:5], initial_state=ins[5], output_final_state=True, reverse=reverse, cu_seqlens=cus, **kw)
        w = torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)
        got.append([o, h, *torch.autograd.grad((o * w).sum() + 0.3 * h.sum(), leaves)])
    for a, b in zip(got[1], got[0]):
        assert rel(a, b) < 1e-10


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


def test_public_op_float64_takes_the_reference():
    """float64 inputs run the reference in float64 (as the other families' ops), also on the gradients."""
    q, k, v, beta, g, h0 = [x.requires_grad_() for x in make_inputs(1, 9, 2, 8, 8)]
    o, ht = delta_rule(q, k, v, beta, g, initial_state=h0, output_final_state=True, reverse=True)
    assert o.dtype == ht.dtype == torch.float64
    leaves = [t.detach().requires_grad_() for t in (q, k, v, beta, g, h0)]
    o_ref, h_ref = delta_rule_recurrent(*leaves[:5], initial_state=leaves[5], output_final_state=True, reverse=True)
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ht, h_ref, rtol=1e-12, atol=1e-12)
    do = torch.randn_like(o)
    got = torch.autograd.grad(o, (q, k, v, beta, g, h0), do)
    want = torch.autograd.grad(o_ref, leaves, do)
    for name, a, b in zip(NAMES, got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f'd{n}: {m}')


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
    with pytest.raises(ValueError, match='q must be float32, float16 or bfloat16 \\(or float64'):
        delta_rule(q.int(), k, v, beta)
    with pytest.raises(ValueError, match='share one dtype'):
        delta_rule(q.double(), k, v, beta)
    with pytest.raises(ValueError, match='cu_seqlens must rise'):
        delta_rule(q[:1], k[:1], v[:1], beta[:1], cu_seqlens=torch.tensor([0, 3, 4], dtype=torch.int32))
