"""Gated linear attention core: Triton kernels (interpreter on CPU) against the float64 step-by-step reference.

Every case checks the output, the final state and the gradients of every input (q, k, v, gates, u, initial
state) by relative error ||out - ref|| / ||ref||: < 1e-5 for fp32 inputs, < 1e-2 for bf16. Inputs are fresh
random draws each run (the seed is printed); kernel outputs start NaN-filled so unwritten elements fail.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.test_ops.kernel_checks import poison, rel_err  # noqa: F401 (poison: an autouse fixture)
from vla_mm.ops import gla as gla_ops
from vla_mm.ops.common import kernel_options
from vla_mm.ops.gla import (chunk, chunk_a, chunk_gla, chunk_gla_triton, chunk_subblock, gla_recurrent_reference,
                            launch, state)


def _log_gates(shape, strength):
    """Random log gates (about -0.3), or ``strength`` times U(0.5, 1.5), or the constant ``strength`` when it is
    a string ('-20': every gate exactly -20, as the GPU sweep draws strong gates)."""
    if strength is None:
        return F.logsigmoid(torch.randn(shape) + 1.0)
    if isinstance(strength, str):
        return torch.full(shape, float(strength))
    return torch.full(shape, strength) * (0.5 + torch.rand(shape))


def _inputs(B, N, H, K, V, gate, gv, u, h0, nseq, dtype, strength=None):
    q = torch.randn(B, N, H, K)
    k = torch.randn(B, N, H, K)
    v = torch.randn(B, N, H, V)
    g = None
    if gate != 'none':
        g = _log_gates((B, N, H) if gate == 'scalar' else (B, N, H, K), strength)
    gvv = _log_gates((B, N, H, V), strength) if gv else None
    uu = torch.randn(H, K) if u else None
    hh = torch.randn(nseq, H, K, V) if h0 else None
    return [x.to(dtype) if x is not None else None for x in (q, k, v, g, gvv, uu, hh)]


def _check(B, N, H, K, V, gate='vector', gv=False, u=False, h0=True, reverse=False, cu=None, dtype=torch.float32,
           chunk_size=64, strength=None, scale=None, tol=None):
    seed = torch.seed()
    print(f'seed={seed}')
    nseq = B if cu is None else len(cu) - 1
    cus = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    ins = _inputs(B, N, H, K, V, gate, gv, u, h0, nseq, dtype, strength)
    names = ['q', 'k', 'v', 'g', 'gv', 'u', 'h0']
    live = [(n, x.requires_grad_(True)) for n, x in zip(names, ins) if x is not None]
    q, k, v, g, gvv, uu, hh = ins
    o, ht = chunk_gla_triton(q, k, v, gk=g, gv=gvv, u=uu, scale=scale, initial_state=hh, output_final_state=True,
                             cu_seqlens=cus, reverse=reverse, chunk_size=chunk_size)
    do = torch.randn_like(o)
    dht = torch.randn_like(ht)
    grads = torch.autograd.grad((o * do).sum() + (ht * dht).sum(), [x for _, x in live])

    ref_in = {n: x.detach().double().requires_grad_(True) for n, x in live}
    o2, ht2 = gla_recurrent_reference(ref_in['q'], ref_in['k'], ref_in['v'], gk=ref_in.get('g'),
                                      gv=ref_in.get('gv'), u=ref_in.get('u'), scale=scale,
                                      initial_state=ref_in.get('h0'), output_final_state=True, cu_seqlens=cus,
                                      reverse=reverse)
    grads2 = torch.autograd.grad((o2 * do.double()).sum() + (ht2 * dht.double()).sum(), list(ref_in.values()))
    tol = tol or (1e-5 if dtype == torch.float32 else 1e-2)
    errs = {'o': rel_err(o, o2), 'ht': rel_err(ht, ht2)}
    errs.update({f'd{n}': rel_err(a, b) for (n, _), a, b in zip(live, grads, grads2)})
    print(errs)
    bad = {n: e for n, e in errs.items() if not e < tol}
    assert not bad, f'relative error over {tol}: {bad}'


# every listed N (1, 7, 63, 197) appears; gate kinds, direction, initial state, bonus, packing spread over cases
@pytest.mark.parametrize('gate,N,reverse,h0,u,chunk_size', [
    ('none', 63, False, False, False, 64),
    ('none', 1, True, True, False, 64),
    ('scalar', 197, False, True, False, 64),
    ('scalar', 7, True, False, True, 64),
    ('vector', 63, False, True, False, 32),
    ('vector', 197, True, False, False, 64),
    ('vector', 7, False, True, True, 16),
    ('vector', 63, True, True, True, 32),
])
def test_chunk_gla_fp32(gate, N, reverse, h0, u, chunk_size):
    B, H = (2, 1) if N < 100 else (1, 2)
    _check(B, N, H, 16, 32 if N < 100 else 16, gate=gate, u=u, h0=h0, reverse=reverse, chunk_size=chunk_size)


@pytest.mark.parametrize('reverse', [False, True])
def test_chunk_gla_varlen(reverse):
    # packed sequences of ragged lengths (1, 7, 63-ish), chunk boundaries inside and across sequences
    _check(1, 80, 1, 16, 16, gate='vector', h0=True, reverse=reverse, cu=[0, 1, 8, 80], chunk_size=32)


@pytest.mark.parametrize('gate,gv,u,reverse,h0,cu,seg', [
    ('vector', False, False, False, True, None, 1),
    ('scalar', False, False, True, False, None, 1),
    ('none', False, False, False, True, None, 1),
    ('vector', True, False, True, True, None, 1),           # value gates: columns decay across segments too
    ('scalar', False, True, False, True, None, 1),          # bonus: its backward's boundary terms split too
    ('vector', False, True, True, True, [0, 1, 40, 80], 2),   # RWKV6 form, packed, two chunks a segment
    ('vector', False, False, True, True, [0, 0, 16, 23, 80], 1),   # packed: empty, one-chunk and five-chunk sequences
])
def test_chunk_gla_state_segments(gate, gv, u, reverse, h0, cu, seg):
    """The state kernels split in time (``seg`` chunks a segment: states cross segment boundaries; the bonus
    form's boundary terms start each segment from the composed state without its boundary token), against the
    float64 step reference, outputs, final state and every gradient."""
    with kernel_options(launch={'gla_state': {'segment': seg, 'split_adj': True}}):
        _check(1 if cu else 2, 80, 1, 16, 16, gate=gate, gv=gv, u=u, h0=h0, reverse=reverse, cu=cu, chunk_size=16)


def test_state_segment_plan(monkeypatch):
    """Segments where (sequence, head, state tile) programs fill few slots: three or more, else none (a split walks
    every chunk twice); the bonus form's boundary terms only with ``split_adj`` (then with one more summary
    buffer); a fixed length when asked."""
    from vla_mm.ops.common.varlen import ChunkTable, PackedSeqs
    from vla_mm.ops.gla import state
    cpu = torch.device('cpu')     # one "SM" on the CPU: progs_per_sm is the number of programs aimed at
    meta = ChunkTable(PackedSeqs(2, 64 * 40, None, cpu), 64, 3)           # 40 chunks a sequence
    for launch, tiles, adj, want in [({'progs_per_sm': 24}, 6, False, (10, 4)),   # 4 segments of 10 chunks
                                     ({'progs_per_sm': 12}, 6, False, (40, 1)),   # 2 segments: not worth it
                                     ({'progs_per_sm': 600}, 6, False, (8, 5)),   # min_segment 8 chunks
                                     ({'progs_per_sm': 24}, 6, True, (40, 1)),
                                     ({'progs_per_sm': 24, 'split_adj': True}, 6, True, (10, 4)),
                                     ({'segment': 7}, 1000, False, (7, 6))]:
        with kernel_options(launch={'gla_state': launch}):
            segc, nseg, (sak, sav, sb, sbx) = state._segments(meta, tiles, 16, 32, cpu, adj)
        assert (segc, nseg) == want
        if nseg > 1:
            assert sak.shape == (6, nseg, 16) and sav.shape == (6, nseg, 32) and sb.shape == (6, nseg, 16, 32)
            assert sbx.shape == ((6, nseg, 16, 32) if adj else (1,)), sbx.shape


@pytest.mark.parametrize('reverse', [False, True])
def test_chunk_gla_empty_sequences(reverse):
    # empty packed sequences first and last (their final state is the initial one): the final-state gate-gradient
    # term was added at row -1 / row N (an index out of range) before
    _check(1, 30, 1, 16, 16, gate='vector', h0=True, reverse=reverse, cu=[0, 0, 30, 30], chunk_size=16)


def test_chunk_gla_value_gate():
    _check(1, 50, 1, 16, 32, gate='vector', gv=True, h0=True, reverse=True, chunk_size=32)
    _check(1, 40, 1, 32, 16, gate='none', gv=True, h0=False, reverse=False, chunk_size=32)


@pytest.mark.parametrize('gate', ['scalar', 'vector'])
@pytest.mark.parametrize('strength', [-20.0, -1e-4])
def test_chunk_gla_strong_weak_decay(gate, strength):
    _check(1, 70, 1, 16, 16, gate=gate, h0=True, reverse=strength < -1, chunk_size=32, strength=strength)


# Strong log gates (every gate -20, as the GPU sweep draws them): the true gate gradient is ~1e-7 while q * dq and
# k * dk (o * do and v * dv for value gates) are O(1). dL/dg is formed per token from those products and then
# summed over later tokens; every pair of tokens (t, s) enters it at both ends, and a pair whose gate factor is
# exp(0) over an empty range of gates (t == s; with the bonus u also s == t - 1, the first token's pair with h0,
# and the chunk-boundary pairs, which go through the states) cancels exactly. Such pairs must be kept out of the
# gate-gradient buffers: left in, their two O(1) halves cancel only up to the rounding of each, which on a GPU
# (tf32 / bf16 tensor-core operands, ~1e-3) leaves noise 1e3-1e5 times the true gradient.
_STRONG = [  # gate, gv, u, gla_a_path, reverse, cu_seqlens
    ('vector', False, True, True, True, [0, 1, 30, 31, 70]),   # RWKV6 form, packed with one-token sequences
    ('scalar', False, True, True, False, None),
    ('vector', False, True, False, True, None),                # bonus on the sub-block path
    ('none', True, False, False, True, None),                  # value gates only: GSA's first pass
    ('vector', True, False, False, False, [0, 33, 70]),
    ('scalar', False, False, True, False, None),               # no bonus: only the t == s terms
]


@pytest.mark.parametrize('gate,gv,u,a_path,reverse,cu', _STRONG)
def test_strong_gates_gate_gradient_buffers(monkeypatch, gate, gv, u, a_path, reverse, cu):
    """fp32 at strong gates (exact fp32 dots in the interpreter): every gradient within 1e-5 of float64, and every
    entry of the per-token gate-gradient buffers (what the reverse cumsum sums within each chunk) and of the
    closed-form share of the later chunks (the final-state term included) below 1e-6 (they are ~1e-8 when every
    term carries a gate factor; the bonus forms held 10-40 before its pairs were left out, a failure here whatever
    the dot precision). Before, value gates left ~5e-7 in the buffers
    (o * do and v * dv agreeing to fp32 rounding), caught by the relative errors (1e2 and 4e10 here)."""
    seen = []

    def record(x, meta, reverse, carry):
        seen.append(max(x.abs().max().item(), carry.abs().max().item()))
        return revcumsum(x, meta, reverse, carry)

    revcumsum = chunk._revcumsum
    monkeypatch.setattr(chunk, '_revcumsum', record)
    B = 1 if cu is not None else 2
    with kernel_options(gla_a_path=a_path):
        _check(B, 70 if cu is not None else 40, 1, 16, 16, gate=gate, gv=gv, u=u, h0=True, reverse=reverse, cu=cu,
               chunk_size=32, strength='-20')
    assert len(seen) == (gate != 'none') + gv and max(seen) < 1e-6, seen


@pytest.mark.parametrize('gate,gv,u,reverse,cu', [('vector', False, True, True, [0, 1, 40, 70]),
                                                    ('scalar', False, False, False, None),
                                                    ('none', True, False, True, None)])
def test_gate_gradient_errors_stay_in_their_chunk(monkeypatch, gate, gv, u, reverse, cu):
    """An error in a token's gate-gradient term reaches the gate gradients of its own chunk only: the later chunks'
    share is taken in closed form from the states. Every term is biased by delta here (as rounding would): each
    gate gradient moves by delta times the number of its chunk's tokens from it on, at most chunk_size * delta.
    Before, one reverse cumulative sum over the sequence carried every later chunk's errors into a token (here up
    to 70 delta; on the GPU the tf32 rounding of the terms added up as sqrt(N): GSA bf16 dL/dg 1.06e-2 at N = 4097)."""
    C, N, delta = 16, 70, 1e-3
    torch.manual_seed(0)
    ins = _inputs(1, N, 1, 16, 16, gate, gv, u, True, 1 if cu is None else len(cu) - 1, torch.float32)
    cus = torch.tensor(cu, dtype=torch.int32) if cu is not None else None
    revcumsum = chunk._revcumsum

    def dgate():
        xs = [x.detach().clone().requires_grad_(True) if x is not None else None for x in ins]
        q, k, v, g, gvv, uu, hh = xs
        o, ht = chunk_gla_triton(q, k, v, gk=g, gv=gvv, u=uu, initial_state=hh, output_final_state=True,
                                 cu_seqlens=cus, reverse=reverse, chunk_size=C)
        gen = torch.Generator().manual_seed(1)
        loss = (o * torch.randn(o.shape, generator=gen)).sum() + (ht * torch.randn(ht.shape, generator=gen)).sum()
        return torch.autograd.grad(loss, g if gate != 'none' else gvv)[0]

    exact = dgate()
    monkeypatch.setattr(chunk, '_revcumsum', lambda x, meta, rev, carry: revcumsum(x + delta, meta, rev, carry))
    moved = (dgate() - exact) / delta
    bounds = cu if cu is not None else [0, N]
    want = torch.zeros(N)
    for a, e in zip(bounds[:-1], bounds[1:]):
        t = torch.arange(e - a)                                     # logical time in the sequence
        left = torch.minimum((t // C + 1) * C, torch.tensor(e - a)) - t    # tokens of t's chunk from t on
        want[a:e] = (left.flip(0) if reverse else left).float()
    want = want.view(1, N, 1, *([1] if moved.dim() == 4 else []))
    assert (moved - want).abs().max() < 1e-2, (moved - want).abs().max()


def _tf32_operands(monkeypatch):
    """Round the operands of every tl.dot in Triton's interpreter to tf32 (10 mantissa bits, as tensor cores take
    fp32 operands; bf16 operands are coarser still), so that CPU tests see what inexact dots do."""
    from triton.runtime import interpreter
    exact = interpreter.InterpreterBuilder.create_dot

    def tf32(h):
        if h.data.dtype != np.float32:
            return h
        bits = h.data.view(np.uint32).astype(np.uint64)
        return interpreter.TensorHandle(((bits + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32),
                                        h.dtype.scalar)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return exact(self, tf32(a), tf32(b), d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(interpreter.InterpreterBuilder, 'create_dot', create_dot)


@pytest.mark.parametrize('gate,gv,u,a_path', [('vector', False, True, True), ('scalar', False, True, False),
                                              ('none', True, False, False), ('vector', False, False, True)])
def test_strong_gates_with_inexact_dots(monkeypatch, gate, gv, u, a_path):
    """The GPU's case, emulated: strong gates with every dot's operands rounded to tf32. The gate gradients stay
    within 1e-2 of float64 (tf32 rounding of the small terms only, ~1e-3); with the cancelling pairs of the bonus
    form or of the value gates left in, their relative errors were 4e5-9e5 (bonus) and 9e1 (value gates)."""
    _tf32_operands(monkeypatch)
    with kernel_options(gla_a_path=a_path):
        _check(1, 40, 1, 16, 16, gate=gate, gv=gv, u=u, h0=True, chunk_size=32, strength='-20', tol=1e-2)


def test_fused_scalar_paths_at_strong_gates(monkeypatch):
    """The fused one-gate-per-head paths (``fuse_a``, ``fuse_intra``) keep the t == s pairs out of the gate-gradient
    buffers as the sub-block kernels do: at log gates of -20 the buffers stay below 1e-6 with exact fp32 dots, and
    the gradients within 1e-2 of float64 with every dot's operands rounded to tf32 (the GPU's case)."""
    seen = []
    revcumsum = chunk._revcumsum

    def record(x, meta, reverse, carry):
        seen.append(max(x.abs().max().item(), carry.abs().max().item()))
        return revcumsum(x, meta, reverse, carry)
    monkeypatch.setattr(chunk, '_revcumsum', record)
    for name in ('_fwd_A_kernel', '_bwd_intra_kernel'):
        monkeypatch.setattr(chunk_a, name, _Refuse(name))
    with kernel_options(launch={'fwd_oA': {'fuse_a': True}, 'dA': {'fuse_intra': True}}):
        _check(2, 40, 1, 16, 16, gate='scalar', h0=True, chunk_size=32, strength='-20')
        assert len(seen) == 1 and seen[0] < 1e-6, seen
        _tf32_operands(monkeypatch)
        _check(1, 40, 1, 16, 16, gate='scalar', h0=True, chunk_size=32, strength='-20', tol=1e-2)


def test_value_gate_residuals_opcheck():
    # the value-gate path keeps oex (fp32, o without its t == s terms) for the backward: the fake implementation
    # must describe it (shapes, dtypes) as the Triton forward returns it
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 6, 1, 8, generator=g).requires_grad_() for _ in range(3))
    gv = F.logsigmoid(torch.randn(1, 6, 1, 8, generator=g)).requires_grad_()
    with kernel_options(backend='triton'):
        torch.library.opcheck(torch.ops.vla_mm.chunk_gla.default, (q, k, v, None, gv, None, 0.5, None, True, None,
                                                                   False, 16))


def test_chunk_gla_bf16_fp16():
    _check(1, 100, 1, 32, 32, gate='vector', h0=True, dtype=torch.bfloat16, chunk_size=64)
    _check(1, 60, 2, 32, 32, gate='scalar', u=True, h0=False, dtype=torch.bfloat16, reverse=True, chunk_size=32)
    _check(1, 40, 1, 16, 16, gate='vector', h0=True, dtype=torch.float16, chunk_size=32)


def test_backward_operands_follow_the_gate_gradients(monkeypatch):
    """16-bit inputs: the backward takes fp32 operands (and fp32 stored states) always (``gla_bwd_fp32=True``, the
    default), never (False), or only where a gate gradient is taken (``'gate_grads'``): without gates, or with a
    gate that needs no gradient (RetNet's fixed decays), it then takes the input dtype as the forward does."""
    monkeypatch.setattr(chunk, '_lowp', lambda ieee: not ieee)   # the GPU's rule (the interpreter keeps fp32)
    table = {(True, True): False, (True, False): False, ('gate_grads', True): False, ('gate_grads', False): True,
             (False, True): True}
    for (opt, grads), lowp in table.items():
        with kernel_options(gla_bwd_fp32=opt):
            assert chunk._bwd_lowp(False, grads) == lowp and not chunk._bwd_lowp(True, grads)
    with pytest.raises(ValueError, match='gla_bwd_fp32'):
        with kernel_options(gla_bwd_fp32='fp16'):
            pass

    class _Stop(Exception):
        pass
    seen = []

    def spy(*args, **kw):
        seen.append(kw['h_dtype'])
        raise _Stop
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 40, 2, 16, generator=g).bfloat16().requires_grad_() for _ in range(3))
    gk = F.logsigmoid(torch.randn(1, 40, 2, generator=g)).bfloat16()
    for gate, wants in ((None, False), (gk, False), (gk.clone().requires_grad_(), True)):
        monkeypatch.setattr(chunk, '_lowp', lambda ieee: False)
        with kernel_options(gla_bwd_fp32='gate_grads'):   # the backward runs under the forward's options
            o, _ = chunk_gla_triton(q, k, v, gk=gate, chunk_size=16)
        monkeypatch.setattr(chunk, '_lowp', lambda ieee: not ieee)
        monkeypatch.setattr(chunk, '_fwd_h', spy)
        with pytest.raises(_Stop):
            o.sum().backward()
        monkeypatch.undo()
        assert seen[-1] == (torch.float32 if wants else torch.bfloat16), (gate is None, wants, seen)


def test_unasked_gate_gradient_is_not_formed(monkeypatch):
    """RetNet's decays need no gradient: the backward skips the gate-gradient sums (no ``_revcumsum``, no
    boundary terms) and the other gradients stay within float64 tolerance; asked for, they are formed."""
    calls = []
    for name in ('_revcumsum', '_boundary_terms'):
        fn = getattr(chunk, name)
        monkeypatch.setattr(chunk, name, lambda *a, fn=fn, name=name: calls.append(name) or fn(*a))
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 70, 2, 16, generator=g, dtype=torch.float64) for _ in range(3))
    gk = F.logsigmoid(torch.randn(2, 70, 2, generator=g, dtype=torch.float64))
    live = [t.float().requires_grad_() for t in (q, k, v)]
    o, ht = chunk_gla_triton(*live, gk=gk.float(), output_final_state=True, chunk_size=32)
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    grads = torch.autograd.grad((o * do).sum() + (ht * dht).sum(), live)
    assert calls == []
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    o2, ht2 = gla_recurrent_reference(*ref, gk=gk, output_final_state=True)
    grads2 = torch.autograd.grad((o2 * do.double()).sum() + (ht2 * dht.double()).sum(), ref)
    for a, b in zip((o, *grads), (o2, *grads2)):
        assert rel_err(a, b) < 1e-5
    gk32 = gk.float().requires_grad_()
    o, _ = chunk_gla_triton(*live, gk=gk32, chunk_size=32)
    torch.autograd.grad(o.sum(), gk32)
    assert '_revcumsum' in calls and '_boundary_terms' in calls


def test_chunk_gla_precision_and_launch_options():
    # the benchmark's knobs: 3xtf32 fp32 operands, bf16 backward operands, per-kernel launch options
    with kernel_options(gla_f32_operands='tf32x3', launch={'dq': dict(num_warps=2), 'dk': dict(num_stages=1)}):
        _check(1, 40, 1, 16, 16, gate='vector', h0=True, dtype=torch.bfloat16, chunk_size=32)
        with kernel_options(gla_bwd_fp32=False):
            _check(1, 40, 1, 16, 16, gate='vector', gv=True, h0=True, dtype=torch.bfloat16, reverse=True,
                   chunk_size=32)
    with pytest.raises(ValueError, match='gla_f32_operands'):
        with kernel_options(gla_f32_operands='fp64'):
            pass


def _spy_flags(monkeypatch, *kernels):
    """Launch each (name, constexpr) of ``chunk_a`` as before, recording that constexpr's value per launch, in
    launch order, into the returned list."""
    seen = []
    for name, flag in kernels:
        kernel = getattr(chunk_a, name)

        class _Spy:
            def __getitem__(self, grid, kernel=kernel, flag=flag):
                def launch(*args, **kw):
                    seen.append(kw[flag])
                    return kernel[grid](*args, **kw)
                return launch
        monkeypatch.setattr(chunk_a, name, _Spy())
    return seen


class _Refuse:
    """Stands in for a kernel that must not be launched."""

    def __init__(self, name):
        self.name = name

    def __getitem__(self, grid):
        raise AssertionError(f'{self.name} launched')


@pytest.mark.parametrize('gate,u,reverse,cu,K,V', [
    ('none', True, False, None, 16, 16),             # no gate with the bonus
    ('scalar', True, True, [0, 5, 40, 70], 16, 16),  # packed sequences, one gate per head, bonus, reverse
    ('vector', True, False, [0, 33, 34, 70], 16, 16),
    ('vector', False, True, None, 80, 72),           # several key / value blocks, masked tails (BK = BV = 64)
    ('scalar', False, False, None, 80, 72),
])
def test_chunk_gla_A_path(monkeypatch, gate, u, reverse, cu, K, V):
    # without value gates the intra-chunk matrix path runs: none of the sub-block chunk kernels may launch
    for name in ('_fwd_o_kernel', '_bwd_dv_kernel', '_bwd_dq_kernel', '_bwd_dk_kernel'):
        monkeypatch.setattr(chunk_subblock, name, _Refuse(name))
    B = 1 if cu is not None else 2
    _check(B, 70, 1, K, V, gate=gate, u=u, h0=True, reverse=reverse, cu=cu, chunk_size=32)


@pytest.mark.parametrize('gate,reverse,cu,K,V,strength', [
    ('scalar', True, [0, 1, 40, 70], 16, 16, None),   # packed with a one-token sequence, reverse
    ('none', False, None, 16, 16, None),              # no gate: the causal mask alone
    ('scalar', False, None, 80, 72, None),            # two key and value blocks, masked tails
    ('scalar', True, None, 16, 16, -20.0),            # strong decays: every off-diagonal pair underflows
])
def test_chunk_gla_fused_scores(monkeypatch, gate, reverse, cu, K, V, strength):
    """``launch={'fwd_oA': {'fuse_a': True}, 'dA': {'fuse_intra': True}}`` (one gate per head or none):
    _fwd_oA_kernel forms and stores the intra-chunk scores itself and _bwd_dA_kernel the strict-pair dq / dk,
    neither _fwd_A_kernel nor _bwd_intra_kernel launches, and the forward and every gradient (the gate's
    included) stay within float64 tolerance; with the bonus (u) both keep the sub-block kernels."""
    for name in ('_fwd_A_kernel', '_bwd_intra_kernel'):
        monkeypatch.setattr(chunk_a, name, _Refuse(name))
    with kernel_options(launch={'fwd_oA': {'fuse_a': True}, 'dA': {'fuse_intra': True}}):
        _check(1 if cu else 2, 70, 1, K, V, gate=gate, h0=True, reverse=reverse, cu=cu, chunk_size=32,
               strength=strength)
        if strength is None and cu is None:
            with pytest.raises(AssertionError, match='_fwd_A_kernel launched'):
                _check(2, 40, 1, K, V, gate=gate, u=True, h0=False, chunk_size=32)


@pytest.mark.parametrize('gate,fuse_da,cu,K,V', [('scalar', None, [0, 1, 40, 70], 80, 72),   # one 128-wide key block
                                               ('none', True, None, 80, 16),      # two key blocks
                                               ('scalar', False, None, 16, 16)])
def test_intra_terms_inside_the_inter_kernel(monkeypatch, gate, fuse_da, cu, K, V):
    """``inter``'s ``fuse_da`` (with ``fuse_intra``; the default, FUSE_DA): ``_bwd_inter_kernel`` forms dA and
    the strict-pair dq / dk itself and ``_bwd_dA_kernel`` does not launch; off, it launches and the inter kernel
    reads its output. Either way every gradient (the gate's included) within float64 tolerance."""
    seen = _spy_flags(monkeypatch, ('_bwd_inter_kernel', 'INTRA'))
    merged = chunk_a.FUSE_DA if fuse_da is None else fuse_da
    if merged:
        monkeypatch.setattr(chunk_a, '_bwd_dA_kernel', _Refuse('_bwd_dA_kernel'))
    with kernel_options(launch={} if fuse_da is None else {'inter': {'fuse_da': fuse_da}}):
        _check(1 if cu else 2, 70, 1, K, V, gate=gate, h0=True, reverse=cu is not None, cu=cu, chunk_size=32)
    assert seen == [merged]


@pytest.mark.parametrize('recompute,gate,reverse,cu', [(None, 'scalar', True, [0, 1, 40, 70]),
                                                      (False, 'none', False, None)])
def test_scores_formed_again_in_the_backward(monkeypatch, recompute, gate, reverse, cu):
    """``fwd_oA``'s ``recompute_a`` (the default with ``fuse_a``): the forward stores no scores A (not among the
    custom op's residuals, its fake implementation agreeing: opcheck) and ``_bwd_dvA_kernel`` forms them again;
    off, A is stored and read. Either way every gradient within float64 tolerance."""
    seen = _spy_flags(monkeypatch, ('_fwd_oA_kernel', 'STORE_A'), ('_bwd_dvA_kernel', 'FORM_A'))
    formed = recompute is None or recompute
    with kernel_options(launch={} if recompute is None else {'fwd_oA': {'recompute_a': recompute}}):
        _check(1 if cu else 2, 70, 1, 16, 16, gate=gate, h0=True, reverse=reverse, cu=cu, chunk_size=32)
        assert seen == [not formed, formed]
        g = torch.Generator().manual_seed(5)
        q, k, v = (torch.randn(1, 40, 2, 16, generator=g).requires_grad_() for _ in range(3))
        gk = F.logsigmoid(torch.randn(1, 40, 2, generator=g)).requires_grad_() if gate == 'scalar' else None
        assert ('A' in chunk.saved_layout(q, k, v, gk, None, None, None)) == (not formed)
        wide = torch.zeros(1, 40, 2, chunk_a.RECOMPUTE_A_MAX_V + 1)   # two value blocks: stored unless asked
        assert ('A' in chunk.saved_layout(q, k, wide, gk, None, None, None)) == (recompute is None or not formed)
        with kernel_options(backend='triton'):
            torch.library.opcheck(torch.ops.vla_mm.chunk_gla.default, (q, k, v, gk, None, None, 0.5, None, True,
                                                                       None, reverse, 16))


@pytest.mark.parametrize('u,reverse,cu,K,load_m', [
    (True, False, [0, 33, 34, 70], 16, None),   # packed with a one-token sequence, bonus: from memory by default
    (False, True, None, 80, True),              # two key blocks, masked tail, reverse: from memory by option
    (True, False, None, 16, False),             # the bonus with the in-register columns by option
])
def test_intra_diagonal_from_memory(monkeypatch, u, reverse, cu, K, load_m):
    """``_bwd_intra_kernel``'s vector-gate diagonal sub-block with dA's columns read from memory (``LOADM``: the
    default with the bonus, ``launch={'intra': {'load_m': ...}}`` either way): every gradient within float64
    tolerance."""
    seen = _spy_flags(monkeypatch, ('_bwd_intra_kernel', 'LOADM'))
    with kernel_options(launch={} if load_m is None else {'intra': {'load_m': load_m}}):
        _check(1 if cu else 2, 70, 1, K, 16, gate='vector', u=u, h0=True, reverse=reverse, cu=cu, chunk_size=32)
    assert seen == [u if load_m is None else load_m]


@pytest.mark.parametrize('gate,u', [('vector', True), ('scalar', False)])
def test_chunk_gla_sub_block_path(monkeypatch, gate, u):
    # gla_a_path=False: the sub-block kernels for calls without value gates (kept for comparison)
    for name in ('_fwd_A_kernel', '_bwd_intra_kernel', '_bwd_inter_kernel'):
        monkeypatch.setattr(chunk_a, name, _Refuse(name))
    with kernel_options(gla_a_path=False):
        _check(1, 50, 1, 16, 16, gate=gate, u=u, h0=True, reverse=True, chunk_size=32)


def test_chunk_gla_A_path_launch_options():
    with kernel_options(launch={n: dict(num_warps=2, num_stages=2)
                                for n in ('fwd_A', 'fwd_oA', 'dA', 'dvA', 'intra', 'inter')}):
        _check(1, 40, 1, 16, 16, gate='vector', u=True, h0=True, dtype=torch.bfloat16, chunk_size=32)


def test_public_op_dispatch_and_checks():
    torch.manual_seed(0)
    q = torch.randn(1, 9, 2, 8)
    g = F.logsigmoid(torch.randn(1, 9, 2, 8))
    o, ht = chunk_gla(q, q, q, g, output_final_state=True)   # CPU -> the batched chunk form
    o2, _ = gla_recurrent_reference(q, q, q, gk=g)
    # fp32 chunk form vs step by step: rounding differs at the fp32 level (|o| up to ~20)
    torch.testing.assert_close(o, o2, rtol=1e-5, atol=1e-5)
    assert ht.shape == (1, 2, 8, 8)
    with pytest.raises(ValueError, match='g'):
        chunk_gla(q, q, q, g[..., :3])
    with pytest.raises(ValueError, match='u'):
        chunk_gla(q, q, q, g, u=torch.randn(3, 8))
    with pytest.raises(ValueError, match='gate'):
        chunk_gla(q, q, q, g, gate='scalar')
    with pytest.raises(ValueError, match='initial_state'):
        chunk_gla(q, q, q, g, initial_state=torch.randn(2, 2, 8, 8))
    with pytest.raises(ValueError, match='cu_seqlens'):
        chunk_gla(q, q, q, g, cu_seqlens=torch.tensor([0, 4, 8]))
    # named wrappers only set options
    o3, _ = gla_ops.chunk_retention(q, q, q)
    gr = gla_ops.retention_log_decay(2).expand(1, 9, 2)
    o4, _ = gla_recurrent_reference(q, q, q, gk=gr)
    assert torch.allclose(o3, o4, atol=1e-6)


def test_forward_states_stored_in_the_input_dtype(monkeypatch):
    """With 16-bit dots (the GPU's default for bf16 inputs) the forward's per-chunk states are stored in the input
    dtype, as the output kernels round them when they load them (half the state traffic): the stored states are
    the fp32 ones rounded, final states stay fp32; fp32 inputs (and the interpreter's fp32 dots) keep fp32 states."""
    calls = []
    real = chunk._fwd_h

    def spy(*args, **kw):
        calls.append((args, kw))
        return real(*args, **kw)

    monkeypatch.setattr(chunk, '_fwd_h', spy)
    q, k, v, g, _, _, h0 = _inputs(1, 70, 2, 16, 32, 'vector', False, False, True, 2, torch.bfloat16)
    cu = torch.tensor([0, 33, 70], dtype=torch.int32)
    with torch.no_grad():
        chunk_gla_triton(q, k, v, gk=g, initial_state=h0, output_final_state=True, cu_seqlens=cu, chunk_size=16)
        monkeypatch.setattr(chunk, '_lowp', lambda ieee: not ieee)     # 16-bit dots, as on the GPU
        chunk_gla_triton(q, k, v, gk=g, chunk_size=16)
        assert [kw['h_dtype'] for _, kw in calls] == [torch.float32, torch.bfloat16]
        args, kw = calls[0]
        h, ht, _, _ = real(*args, **dict(kw, h_dtype=torch.bfloat16))
        h32, ht32, _, _ = real(*args, **kw)
    assert h.dtype == torch.bfloat16 and ht.dtype == torch.float32 and torch.equal(ht, ht32)
    # each stored state is a bf16 neighbour of the fp32 one (the GPU rounds to nearest, the interpreter truncates)
    near = h32.to(torch.bfloat16).float()
    trunc = (h32.view(torch.int32) & -65536).view(torch.float32)
    assert ((h.float() == near) | (h.float() == trunc)).all()


def test_retention_decay_made_on_the_target_device():
    """RetNet's decays are formed on the tensors' device, with no host tensor to copy over (a CUDA graph capture
    refuses the copy; H100, session 18): every tensor the call makes is on ``device``; values log(1 - 2^(-5-h))."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Devices(TorchDispatchMode):
        seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.seen.update(str(t.device) for t in torch.utils._pytree.tree_leaves(out) if torch.is_tensor(t))
            return out

    with _Devices() as mode:
        d = gla_ops.retention_log_decay(3, device='meta', dtype=torch.bfloat16)
    assert d.device.type == 'meta' and d.dtype == torch.bfloat16 and mode.seen == {'meta'}
    want = torch.tensor([np.log(1 - 2.0 ** (-5 - h)) for h in range(3)], dtype=torch.float64)
    assert torch.allclose(gla_ops.retention_log_decay(3, dtype=torch.float64), want, rtol=1e-12, atol=0)


class _Count:
    """Wraps a kernel and counts its launches."""

    def __init__(self, kernel):
        self.kernel, self.n = kernel, 0

    def __getitem__(self, grid):
        self.n += 1
        return self.kernel[grid]


@pytest.mark.parametrize('gate,gv,u', [('vector', False, True),    # A path
                                       ('scalar', False, False),   # A path, one gate per head
                                       ('vector', True, False)])   # sub-block path (value gates)
def test_chunk_gla_backward_reuses_gate_cumsums(monkeypatch, gate, gv, u):
    # the forward launches _cumsum_kernel once per gate; the backward takes the kept cumsums and launches none
    ngates = 1 + int(gv)
    torch.manual_seed(0)
    ins = _inputs(1, 40, 1, 16, 16, gate, gv, u, True, 1, torch.float32)
    cus = None
    results = {}
    for keep in (True, False):
        count = _Count(state._cumsum_kernel)
        monkeypatch.setattr(state, '_cumsum_kernel', count)
        xs = [x.detach().clone().requires_grad_(True) if x is not None else None for x in ins]
        q, k, v, g, gvv, uu, hh = xs
        with kernel_options(gla_keep_cumsum=keep):
            o, ht = chunk_gla_triton(q, k, v, gk=g, gv=gvv, u=uu, initial_state=hh, output_final_state=True,
                                     cu_seqlens=cus, reverse=True, chunk_size=32)
            assert count.n == ngates
            torch.manual_seed(1)
            loss = (o * torch.randn_like(o)).sum() + (ht * torch.randn_like(ht)).sum()
        grads = torch.autograd.grad(loss, [x for x in xs if x is not None])
        assert count.n == (ngates if keep else 2 * ngates), f'backward launched _cumsum_kernel (keep={keep})'
        results[keep] = [o, ht, *grads]
    # reusing the forward's cumsums changes no result (same kernel, same inputs: bitwise equal)
    for a, b in zip(results[True], results[False]):
        assert torch.isfinite(a).all() and torch.equal(a, b)


def test_fwd_A_default_launch():
    # _fwd_A_kernel launches with 2 warps at K <= 64 by default; launch={'fwd_A': ...} still overrides
    assert launch._launch_opts(64, 'fwd_A')['num_warps'] == 2
    assert launch._launch_opts(128, 'fwd_A')['num_warps'] == 8
    assert launch._launch_opts(64, 'fwd_oA')['num_warps'] == 4
    with kernel_options(launch={'fwd_A': dict(num_warps=4, num_stages=1)}):
        assert launch._launch_opts(64, 'fwd_A') == dict(num_warps=4, num_stages=1)


@pytest.mark.parametrize('gate,strength', [('none', None), ('scalar', None), ('vector', None), ('vector', '-20'),
                                           ('scalar', '-20')])
@pytest.mark.parametrize('gv,u', [(False, False), (True, False), (False, True)])
def test_cpu_chunk_form_equals_step_reference(gate, strength, gv, u):
    """The op's CPU path (``gla_chunk_reference``: chunks, batched over B and H) is the step-by-step recurrence:
    output, final state and every gradient in float64, over N not a multiple of the chunk, reverse, initial
    state, and packed sequences with one-token and empty ones."""
    from vla_mm.ops.gla.reference import gla_chunk_reference
    print(f'seed={torch.seed()}')
    for N, reverse, h0, cu in [(1, False, False, None), (37, False, True, None), (70, True, True, None),
                               (70, False, True, [0, 1, 1, 30, 70]), (19, True, False, [0, 18, 19])]:
        B = 1 if cu else 2
        nseq = len(cu) - 1 if cu else B
        cus = torch.tensor(cu) if cu else None
        ins = _inputs(B, N, 2, 8, 5, gate, gv, u, h0, nseq, torch.float64, strength)
        leaves = [x.requires_grad_() for x in ins if x is not None]
        grads = []
        for f in (gla_chunk_reference, gla_recurrent_reference):
            o, ht = f(ins[0], ins[1], ins[2], gk=ins[3], gv=ins[4], u=ins[5], initial_state=ins[6], scale=0.7,
                      output_final_state=True, cu_seqlens=cus, reverse=reverse)
            w = torch.linspace(-1, 1, o.numel(), dtype=o.dtype).reshape(o.shape)
            grads.append([o, ht, *torch.autograd.grad((o * w).sum() + 0.3 * ht.sum(), leaves)])
        for a, b in zip(*grads):
            err = ((a - b).norm() / b.norm().clamp_min(1.0)).item()  # absolute below 1 (a gate's zero gradient)
            assert err < 1e-10, (N, reverse, h0, cu, err)


@pytest.mark.parametrize('strength', [-0.1, -2.4, -20.0])   # factored decays, at the +-40 bound, per-pair decays
@pytest.mark.parametrize('which', ['gk', 'gv'])
def test_cpu_chunk_form_fp32_accuracy(strength, which):
    """In float32 the CPU path keeps fp32 accuracy against the float64 recurrence at every gate strength (the
    factored exp(Q_i) exp(-G_j) form is taken while the chunk's cumulative log gates stay within +-40)."""
    from vla_mm.ops.gla.reference import gla_chunk_reference
    q, k, v = torch.randn(2, 70, 2, 8), torch.randn(2, 70, 2, 8), torch.randn(2, 70, 2, 8)
    g = strength * (0.5 + torch.rand(2, 70, 2, 8)).clamp(max=1.0)
    o, _ = gla_chunk_reference(q, k, v, **{which: g})
    o2, _ = gla_recurrent_reference(q.double(), k.double(), v.double(), **{which: g.double()})
    assert rel_err(o, o2) < 1e-6
