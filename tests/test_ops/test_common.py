"""ops/common: kernel options, the dispatch rule, argument checks, packed-sequence tables, the shared jit helpers
(a probe kernel under the interpreter) and the custom-op registration helper (a toy op, both backward modes)."""
import contextlib
import dataclasses
import threading

import pytest
import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from vla_mm.ops.common import (KernelOptions, PackedSeqs, check_cu_seqlens, check_qkv, current_options,
                               kernel_options, register_op, use_triton)
from vla_mm.ops.common.jit import chunk_info, load_tile, phys_row, store_tile


# ------------------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------------------
def test_env_variables_set_the_defaults(monkeypatch):
    """``VLA_OPS_POISON=1`` and ``VLA_OPS_LAUNCH_CACHE`` give the defaults of a new ``KernelOptions`` (read once:
    the process-wide default is made at import), and a poisoned ``alloc`` is NaN."""
    from vla_mm.ops.common import alloc
    monkeypatch.setenv('VLA_OPS_POISON', '1')
    monkeypatch.setenv('VLA_OPS_LAUNCH_CACHE', 'verify')
    opts = KernelOptions()
    assert opts.poison and opts.launch_cache == 'verify'
    with kernel_options(opts):
        assert torch.isnan(alloc((3,), torch.float32, 'cpu')).all()
    monkeypatch.setenv('VLA_OPS_POISON', '0')
    monkeypatch.setenv('VLA_OPS_LAUNCH_CACHE', '1')
    opts = KernelOptions()
    assert not opts.poison and opts.launch_cache is True


def test_kernel_options_nest_merge_and_restore():
    assert current_options() == KernelOptions()
    with kernel_options(poison=True, launch={'fwd_A': dict(num_warps=2)}) as outer:
        assert current_options() is outer and outer.poison
        with kernel_options(launch={'dq': dict(num_stages=1)}, gla_a_path=False) as inner:
            assert dict(inner.launch_for('fwd_A', 'dq')) == dict(num_warps=2, num_stages=1)
            assert inner.poison and not inner.gla_a_path
        assert current_options() is outer and 'dq' not in outer.launch
    assert current_options() == KernelOptions()


def test_kernel_options_are_frozen_and_checked():
    opts = KernelOptions(launch={'fwd_A': dict(num_warps=2)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.poison = True
    with pytest.raises(TypeError):
        opts.launch['fwd_A']['num_warps'] = 4
    with pytest.raises(ValueError, match='unknown kernel option'):
        with kernel_options(POISON=True):
            pass
    with pytest.raises(ValueError, match='backend'):
        KernelOptions(backend='cuda')
    assert hash(opts) == hash(KernelOptions(launch={'fwd_A': dict(num_warps=2)}))


def test_kernel_options_do_not_leak_into_other_threads():
    seen = []
    with kernel_options(poison=True):
        t = threading.Thread(target=lambda: seen.append(current_options().poison))
        t.start()
        t.join()
    assert seen == [False]


# ------------------------------------------------------------------------------------------------------------
# dispatch rule
# ------------------------------------------------------------------------------------------------------------
def test_use_triton_rule(monkeypatch):
    cpu = torch.zeros(2)
    assert not use_triton(cpu, None)
    with kernel_options(backend='triton'):
        assert use_triton(cpu) and not use_triton(cpu, cpu.double())     # float64 always takes the reference
    with FakeTensorMode():                                                # CUDA tensors without a GPU
        cuda = torch.zeros(2, device='cuda')
        assert use_triton(cuda, None) and not use_triton(cuda, cpu)
        with kernel_options(backend='reference'):
            assert not use_triton(cuda)
        monkeypatch.setenv('VLA_OPS_REFERENCE', '1')
        assert not use_triton(cuda)
        with kernel_options(backend='triton'):
            assert use_triton(cuda)


# ------------------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('cu, B, N, match', [
    ([0, 3, 3, 9], 1, 9, None),
    ([0, 9], 2, 9, 'B == 1'),
    ([0, 4, 8], 1, 9, 'rise from 0 to N'),
    ([0, 5, 4, 9], 1, 9, 'rise from 0 to N'),
    ([1, 9], 1, 9, 'rise from 0 to N'),
    ('float', 1, 9, '1-D int32/int64'),
    ('2d', 1, 9, '1-D int32/int64'),
    ([0], 1, 9, '1-D int32/int64'),
])
def test_check_cu_seqlens(cu, B, N, match):
    t = {'float': torch.tensor([0., 9.]), '2d': torch.tensor([[0, 9]])}.get(cu) if isinstance(cu, str) \
        else torch.tensor(cu, dtype=torch.int32)
    if match is None:
        assert check_cu_seqlens(t, B, N) == len(cu) - 1 and check_cu_seqlens(None, B, N) == B
    else:
        with pytest.raises(ValueError, match=match):
            check_cu_seqlens(t, B, N)


@pytest.mark.parametrize('shapes, match', [
    (((2, 5, 3, 8), (2, 5, 3, 8), (2, 5, 3, 4)), None),
    (((2, 5, 3, 8), (2, 5, 3, 4), (2, 5, 3, 4)), 'k must'),
    (((2, 5, 3, 8), (2, 5, 3, 8), (2, 4, 3, 4)), 'v must'),
    (((2, 5, 8), (2, 5, 8), (2, 5, 8)), 'q must'),
    (((2, 0, 3, 8), (2, 0, 3, 8), (2, 0, 3, 4)), '>= 1'),
    (((2, 5, 3, 300), (2, 5, 3, 300), (2, 5, 3, 4)), 'K must be <= 256'),
])
def test_check_qkv(shapes, match):
    q, k, v = (torch.zeros(s) for s in shapes)
    if match is None:
        assert check_qkv(q, k, v, 256) == (2, 5, 3, 8)
    else:
        with pytest.raises(ValueError, match=match):
            check_qkv(q, k, v, 256)


# ------------------------------------------------------------------------------------------------------------
# packed sequences: tables against a plain enumeration, and the jit helpers reading them
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('B, N, cu, C', [(1, 75, [0, 0, 1, 70, 75, 75], 16), (3, 40, None, 16)])
def test_chunk_tables(B, N, cu, C):
    seqs = PackedSeqs(B, N, torch.tensor(cu) if cu is not None else None, torch.device('cpu'))
    bounds = cu if cu is not None else [s * N for s in range(B + 1)]
    assert seqs.nseq == len(bounds) - 1 and seqs.bounds == bounds
    chunks = [(s, i) for s in range(seqs.nseq) for i in range(triton.cdiv(bounds[s + 1] - bounds[s], C))]
    tab = seqs.chunks(C, 2)
    if cu is not None:
        assert list(zip(tab.chunk_seq.tolist(), tab.chunk_idx.tolist())) == chunks
        assert tab.chunk_off.tolist() == [sum(s2 < s for s2, _ in chunks) for s in range(seqs.nseq)]
        assert (tab.nchunks, tab.nbh) == (len(chunks), 2)
    else:
        assert (tab.nchunks, tab.nbh, tab.total_chunks) == (triton.cdiv(N, C), B * 2, len(chunks))
    assert seqs.spans(30) == [(s, a, min(a + 30, bounds[s + 1])) for s in range(seqs.nseq)
                              for a in range(bounds[s], bounds[s + 1], 30)]
    rows = [i for i, (s, _) in enumerate(chunks) if i + 1 == len(chunks) or chunks[i + 1][0] != s]
    assert tab.last_chunk.tolist() == rows and tab.last_seq.tolist() == [chunks[r][0] for r in rows]
    assert tab.last_chunk.dtype == tab.last_seq.dtype == torch.int64


@triton.jit
def _probe_kernel(x, y, pos, cu, chunk_seq, chunk_idx, N, NT, H, D, C: tl.constexpr, BD: tl.constexpr,
                  REVERSE: tl.constexpr, VARLEN: tl.constexpr):
    """Copies its chunk of x to y through load_tile / store_tile and writes each row's logical position."""
    i_c, i_bh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, i_t, bos, eos, hc = chunk_info(i_c, i_bh, cu, chunk_seq, chunk_idx, N, NT, H, VARLEN)
    t = i_t * C + tl.arange(0, C)
    m = t < eos - bos
    r = phys_row(t, bos, eos, REVERSE)
    c = tl.arange(0, BD)
    store_tile(y, load_tile(x, r, m, c, D, H * D, i_h * D), r, m, c, D, H * D, i_h * D)
    tl.store(pos + r.to(tl.int64) * H + i_h, t, mask=m)


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('B, N, cu', [(1, 40, [0, 0, 9, 33, 40]), (2, 21, None)])
def test_jit_helpers_walk_every_row_once(reverse, B, N, cu):
    H, D, C = 2, 5, 8
    x = torch.randn(B, N, H, D)
    y = torch.full_like(x, float('nan'))
    pos = torch.full((B, N, H), -1, dtype=torch.int32)
    seqs = PackedSeqs(B, N, torch.tensor(cu) if cu is not None else None, x.device)
    tab = seqs.chunks(C, H)
    _probe_kernel[(tab.nchunks, tab.nbh)](x, y, pos, tab.cu, tab.chunk_seq, tab.chunk_idx, N, tab.NT, H, D, C=C,
                                          BD=8, REVERSE=reverse, VARLEN=tab.varlen)
    assert torch.equal(x, y)
    b = seqs.bounds
    want = torch.cat([torch.arange(e - a).flip(0) if reverse else torch.arange(e - a)
                      for a, e in zip(b[:-1], b[1:])]).to(torch.int32)
    assert torch.equal(pos.reshape(B * N, H), want[:, None].expand(B * N, H))


# ------------------------------------------------------------------------------------------------------------
# register_op: a toy op with both backward modes
# ------------------------------------------------------------------------------------------------------------
class _ScaledCumsum(torch.autograd.Function):
    """Stands in for a family's Triton path without a backward of its own (recomputed by the helper)."""
    calls = 0

    @staticmethod
    def forward(ctx, x, s):
        _ScaledCumsum.calls += 1
        ctx.s = s
        return x.cumsum(1) * s

    @staticmethod
    def backward(ctx, g):
        return g.flip(1).cumsum(1).flip(1) * ctx.s, None


def _toy_reference(x, h0, s, with_state):
    y = (x.cumsum(1) + (h0[:, None] if h0 is not None else 0)) * s
    return y, (y[:, -1] if with_state else x.new_empty(0))


def _toy_triton(x, h0, s, with_state):
    y = _ScaledCumsum.apply(x, s) + (h0[:, None] * s if h0 is not None else 0)
    return y, (y[:, -1] if with_state else x.new_empty(0))


def _toy_fake(x, h0, s, with_state):
    return x.new_empty(x.shape), (x.new_empty((x.shape[0], x.shape[2])) if with_state else x.new_empty(0))


_toy = register_op('test_scaled_cumsum', '(Tensor x, Tensor? h0, float s, bool with_state)', outputs=2,
                   grads=('x', 'h0'), reference=_toy_reference, triton=_toy_triton, fake=_toy_fake)


def test_register_op_rejects_unknown_grad_names():
    with pytest.raises(ValueError, match='not arguments'):
        register_op('test_bad', '(Tensor x)', outputs=1, grads=('y',), reference=None, triton=None, fake=None)


@pytest.mark.parametrize('path', ['reference', 'triton'])
def test_register_op_toy(path):
    x = torch.randn(2, 5, 3, requires_grad=True)
    h0 = torch.randn(2, 3, requires_grad=True)
    w = torch.randn(2, 5, 3)

    def loss(x, h0):
        y, yt = _toy(x, h0, 0.5, True)
        return (y * w).sum() + yt.square().sum()

    ref = torch.autograd.grad(loss(x, h0), (x, h0))
    want = torch.autograd.grad(((x.cumsum(1) + h0[:, None]) * 0.5 * w).sum()
                               + ((x.sum(1) + h0) * 0.5).square().sum(), (x, h0))
    calls = _ScaledCumsum.calls
    with kernel_options(backend=path):
        got = torch.autograd.grad(loss(x, h0), (x, h0))
        # Triton path without its own backward: the backward runs the forward again under autograd
        assert _ScaledCumsum.calls - calls == (2 if path == 'triton' else 0)
        torch._dynamo.reset()
        comp = torch.autograd.grad(torch.compile(loss, fullgraph=True, backend='aot_eager')(x, h0), (x, h0))
        torch._dynamo.reset()
        torch.library.opcheck(_toy.custom_op, (x, h0, 0.5, False))
    for a, b, c in zip(want, got, comp):
        torch.testing.assert_close(b, a)
        torch.testing.assert_close(c, a)
    y, yt = _toy(x, None, 1.0, False)                      # an optional input left out, an output not asked for
    assert yt.numel() == 0 and torch.autograd.grad(y.sum(), x)[0].shape == x.shape


@pytest.mark.parametrize('path', ['reference', 'triton'])
def test_eager_calls_skip_the_dispatcher_with_the_same_results(path):
    """Plain eager calls run through the op's autograd.Function (less host time); tracers, dispatch modes and
    ``eager_path='custom_op'`` take the custom op; values and gradients are the same either way."""
    from torch.utils._python_dispatch import TorchDispatchMode
    x = torch.randn(2, 5, 3, requires_grad=True)
    h0 = torch.randn(2, 3, requires_grad=True)
    results = {}
    with kernel_options(backend=path):
        for eager_path in ('function', 'custom_op'):
            with kernel_options(eager_path=eager_path):
                y, yt = _toy(x, h0, 0.5, True)
            assert (type(y.grad_fn).__name__ == 'EagerBackward') == (eager_path == 'function')
            results[eager_path] = (y, yt, *torch.autograd.grad((y.square().sum() + yt.sum()), (x, h0)))

        class Seen(TorchDispatchMode):
            ops = set()

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                Seen.ops.add(str(func))
                return func(*args, **(kwargs or {}))

        with Seen():
            _toy(x, h0, 0.5, True)
    assert any('test_scaled_cumsum' in o for o in Seen.ops)
    for a, b in zip(results['function'], results['custom_op']):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match='eager_path'):
        kernel_options(eager_path='fast').__enter__()


@pytest.mark.parametrize('path', ['reference', 'triton'])
def test_calls_without_gradients_skip_the_autograd_function(path, monkeypatch):
    """Nothing to differentiate (grad mode off, or no differentiable input asks for a gradient): the forward runs
    without the autograd.Function (its context costs host time on every inference call), with the outputs the
    function gives: the same values, contiguous, no autograd history."""
    x, h0 = torch.randn(2, 5, 3).transpose(0, 1).contiguous().transpose(0, 1), torch.randn(2, 3)
    with kernel_options(backend=path):
        want = _toy.function.apply(x, h0, 0.5, True)[:2]
        applied = []
        monkeypatch.setattr(_toy.function, 'apply', lambda *a: applied.append(a))
        for ctx, req in ((torch.no_grad, True), (contextlib.nullcontext, False)):
            xs = x.detach().requires_grad_(req)
            with ctx():
                got = _toy(xs, h0, 0.5, True)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=0, atol=0)
                assert g.is_contiguous() and g.grad_fn is None and not g.requires_grad
        assert not applied
        with pytest.raises(TypeError):   # a differentiable input asking for a gradient takes the function
            _toy(x.detach().requires_grad_(), h0, 0.5, True)
    assert applied


def test_host_integer_helpers_match_triton():
    import triton
    from vla_mm.ops.common import cdiv, next_power_of_2
    for n in range(1, 600):
        assert next_power_of_2(n) == triton.next_power_of_2(n)
        assert all(cdiv(n, b) == triton.cdiv(n, b) for b in (1, 3, 16, 64, 1000))


def test_packed_sequences_refuse_cuda_graph_capture(monkeypatch):
    """cu_seqlens is read on the host: under CUDA-graph capture a clear ValueError, not a capture failure."""
    from vla_mm.ops.common import checks
    cu = torch.tensor([0, 3, 9])
    assert checks.check_cu_seqlens(cu, 1, 9) == 2
    monkeypatch.setattr(checks, 'capturing', lambda t: True)
    with pytest.raises(ValueError, match='CUDA graph'):
        checks.check_cu_seqlens(cu, 1, 9)


class _HostReads(TorchDispatchMode):
    """Records the aten calls that read device values on the host: a CUDA-graph capture fails on them (and on a
    GPU each is a synchronisation)."""
    aten = torch.ops.aten
    READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
             aten.is_nonzero.default}
    INDEXED = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func in self.INDEXED and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                                 for i in (args[1] or ()))
        if func in self.READS or bool_index:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


def test_dense_calls_make_no_host_read_of_device_values(monkeypatch):
    """Forward and backward of every family on the Triton path (interpreter) without packed sequences: no
    ``.item()``, ``nonzero`` or boolean-mask indexing, so the ops can be captured in a CUDA graph
    (``torch.compile(mode='reduce-overhead')``)."""
    import torch.nn.functional as F
    from vla_mm.ops.common import dispatch
    from vla_mm.ops.delta_rule import delta_rule
    from vla_mm.ops.gla import chunk_gla, chunk_rwkv6
    from vla_mm.ops.gsa import gsa
    from vla_mm.ops.hgrn import hgrn
    from vla_mm.ops.linear_attn import linear_attn
    monkeypatch.setattr(dispatch, 'eager_function_ok', lambda args: True)   # the op's Function under the mode
    torch.manual_seed(0)
    B, N, H, D = 2, 20, 1, 16
    q, k, v = (torch.randn(B, N, H, D, requires_grad=True) for _ in range(3))
    g = F.logsigmoid(torch.randn(B, N, H, D)).requires_grad_()
    h0 = torch.randn(B, H, D, D, requires_grad=True)
    u = torch.randn(H, D, requires_grad=True)
    beta = torch.rand(B, N, H, requires_grad=True)
    x, gx = torch.randn(B, N, H * D, requires_grad=True), F.logsigmoid(torch.randn(B, N, H * D)).requires_grad_()
    s, gs = torch.randn(B, N, H, 4, requires_grad=True), F.logsigmoid(torch.randn(B, N, H, 4)).requires_grad_()
    calls = {
        'linear_attn': lambda: linear_attn(q, k, v),
        'chunk_gla': lambda: sum(t.sum() for t in chunk_gla(q, k, v, g, initial_state=h0, output_final_state=True)),
        'chunk_rwkv6': lambda: sum(t.sum() for t in chunk_rwkv6(q, k, v, g, u, output_final_state=True)),
        'delta_rule': lambda: delta_rule(q, F.normalize(k, dim=-1), v, beta, g[..., 0])[0],
        'hgrn': lambda: hgrn(x, gx)[0],
        'gsa': lambda: gsa(q, k, v, s, gs)[0],
    }
    for name, fn in calls.items():
        with kernel_options(backend='triton'), _HostReads() as mode:
            fn().sum().backward()
        assert mode.found == [], (name, mode.found)


def test_launch_entries_are_declared_and_checked():
    """Every family declares the launch names it reads; a misspelt name or key is refused when the options are
    entered (the kernels would otherwise ignore it without a word)."""
    names = ('fwd_A', 'dqk', 'delta_rule_state', 'delta_rule_grads_qk')   # families not imported yet load here
    with kernel_options(launch={**{n: dict(num_warps=2) for n in names}, 'linear_attn': dict(block_n=32),
                                'norm_bwd': dict(loop_stages=2), 'norm_fwd': dict(tile=1024)}) as o:
        assert dict(o.launch_for('delta_rule_state')) == dict(num_warps=2)
    with pytest.raises(ValueError, match="no kernel reads 'fwd_a'"):
        with kernel_options(launch={'fwd_a': dict(num_warps=2)}):
            pass
    with pytest.raises(ValueError, match=r"launch\['dq'\] takes \['maxnreg', 'num_stages', 'num_warps'\], "
                                         r"got \['num_warp'\]"):
        with kernel_options(launch={'dq': dict(num_warp=2)}):
            pass
    with pytest.raises(ValueError, match='no kernel reads'):
        with kernel_options(KernelOptions(launch={'delta_rule_statee': dict(num_warps=2)})):
            pass
    assert current_options() == KernelOptions()


def _sv_reference(x, r, scale):
    s = x + r
    return s * scale, s


def _sv_triton_backward(grads, outputs, residuals, x, r, scale):
    g = sum(gr * c for gr, c in zip(grads, (scale, 1.0)) if gr is not None)
    g = g if torch.is_tensor(g) else torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    return [g, g.clone()]


_saving = register_op('test_saves_nothing', '(Tensor x, Tensor r, float scale)', outputs=2, grads=('x', 'r'),
                      reference=_sv_reference, triton=lambda *a: (_sv_reference(*a), ()),
                      triton_backward=_sv_triton_backward,
                      fake=lambda x, r, scale: [x.new_empty(x.shape), x.new_empty(x.shape)], saves=(),
                      saves_outputs=())


def test_register_op_saves_only_what_the_backward_reads():
    """``saves`` / ``saves_outputs``: on the Triton path the inputs and outputs the backward does not read are kept
    as one-element stand-ins of their shape and dtype (eager, through the custom op, and compiled); the reference
    path keeps them all (its backward recomputes the forward)."""
    x, r = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    with pytest.raises(ValueError, match='saves'):
        register_op('test_bad_saves', '(Tensor x)', outputs=1, grads=('x',), reference=None, triton=None,
                    fake=None, saves=('y',))
    for path, eager_path, most in (('triton', 'function', 1), ('triton', 'custom_op', 1),
                                   ('reference', 'function', x.numel())):
        kept = []
        with kernel_options(backend=path, eager_path=eager_path), \
                torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
            y, s = _saving(x, r, 0.5)
        assert kept and max(t.untyped_storage().nbytes() // t.element_size() for t in kept) == most
        with kernel_options(backend=path, eager_path=eager_path):
            gx, gr = torch.autograd.grad((y * 2 + s).sum(), (x, r))
        torch.testing.assert_close(gx, torch.full_like(x, 2.0))
        torch.testing.assert_close(gr, torch.full_like(x, 2.0))
    with kernel_options(backend='triton'):
        torch._dynamo.reset()
        comp = torch.compile(lambda a, b: _saving(a, b, 0.5)[0].sum(), fullgraph=True, backend='aot_eager')
        torch.testing.assert_close(torch.autograd.grad(comp(x, r), x)[0], torch.full_like(x, 0.5))
        torch._dynamo.reset()
        torch.library.opcheck(_saving.custom_op, (x, r, 0.5))


_needs_seen = []


def _nd_triton_backward(grads, outputs, residuals, x, r, scale, needs):
    _needs_seen.append(needs)
    return [grads[0] * scale if needs[0] else None, grads[0] * scale if needs[1] else None]


_needing = register_op('test_backward_needs', '(Tensor x, Tensor r, float scale)', outputs=1, grads=('x', 'r'),
                       reference=lambda x, r, scale: ((x + r) * scale,),
                       triton=lambda x, r, scale: (((x + r) * scale,), ()),
                       triton_backward=_nd_triton_backward, fake=lambda x, r, scale: [x.new_empty(x.shape)],
                       backward_needs=True)


def test_register_op_tells_the_backward_which_gradients_were_asked_for():
    """``backward_needs``: ``triton_backward`` gets ``needs`` (autograd's needs_input_grad of each name in ``grads``)
    on every route (autograd.Function, custom op, compiled); an unasked gradient it leaves None arrives as None."""
    x, r = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5)
    for eager_path in ('function', 'custom_op'):
        _needs_seen.clear()
        with kernel_options(backend='triton', eager_path=eager_path):
            gx, = torch.autograd.grad(_needing(x, r, 2.0)[0].sum(), (x,))
        assert _needs_seen == [(True, False)], (eager_path, _needs_seen)
        torch.testing.assert_close(gx, torch.full_like(x, 2.0))
    _needs_seen.clear()
    with kernel_options(backend='triton'):
        torch._dynamo.reset()
        comp = torch.compile(lambda a, b: _needing(a, b, 2.0)[0].sum(), fullgraph=True, backend='aot_eager')
        gr, = torch.autograd.grad(comp(x.detach(), r.requires_grad_()), (r,))
        torch._dynamo.reset()
    assert _needs_seen == [(False, True)], _needs_seen
    torch.testing.assert_close(gr, torch.full_like(r, 2.0))
