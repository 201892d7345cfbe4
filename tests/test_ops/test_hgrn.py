"""HGRN scan: Triton kernel (interpreter on CPU) against the float64 step-by-step reference.

Output, final state and gradients of x, g and the initial state; relative error < 1e-5 (fp32), < 1e-2 (bf16);
fresh random inputs each run (seed printed); outputs start NaN-filled.
"""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tests.test_ops.kernel_checks import poison, rel_err  # noqa: F401 (poison: an autouse fixture)
from vla_mm.ops.common import kernel_options
from vla_mm.ops.hgrn import hgrn, hgrn_recurrent_reference, hgrn_triton
from vla_mm.ops.hgrn import scan as hgrn_scan


def _check(B, N, D, h0=True, reverse=False, cu=None, dtype=torch.float32, gated=True, chunk=16, strength=None,
           segment=None):
    if segment is not None:   # the time-split scan: segments of `segment` tokens, summaries composed in order
        with kernel_options(launch={'hgrn': {'segment': segment}}):
            return _check(B, N, D, h0, reverse, cu, dtype, gated, chunk, strength)
    print(f'seed={torch.seed()}')
    S = B if cu is None else len(cu) - 1
    cus = torch.tensor(cu) if cu is not None else None
    x = torch.randn(B, N, D)
    g = F.logsigmoid(torch.randn(B, N, D) + 1.) if strength is None else strength * (0.5 + torch.rand(B, N, D))
    hh = torch.randn(S, D) if h0 else None
    ins = [t.to(dtype).requires_grad_(True) for t in (x, g, hh) if t is not None]
    o, ht = hgrn_triton(ins[0], ins[1], initial_state=ins[2] if h0 else None, output_final_state=True,
                        cu_seqlens=cus, reverse=reverse, gated_input=gated, chunk_size=chunk)
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    gr = torch.autograd.grad((o * do).sum() + (ht * dht).sum(), ins)
    ref = [t.detach().double().requires_grad_(True) for t in ins]
    o2, ht2 = hgrn_recurrent_reference(ref[0], ref[1], initial_state=ref[2] if h0 else None,
                                       output_final_state=True, cu_seqlens=cus, reverse=reverse, gated_input=gated)
    gr2 = torch.autograd.grad((o2 * do.double()).sum() + (ht2 * dht.double()).sum(), ref)
    errs = {'o': rel_err(o, o2), 'ht': rel_err(ht, ht2)}
    errs.update({n: rel_err(a, b) for n, a, b in zip(['dx', 'dg', 'dh0'], gr, gr2)})
    print(errs)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    bad = {n: e for n, e in errs.items() if not e < tol}
    assert not bad, f'relative error over {tol}: {bad}'


@pytest.mark.parametrize('N,reverse,h0,gated,chunk', [
    (1, False, True, True, 16),
    (7, True, False, True, 16),
    (63, False, True, False, 16),
    (197, True, True, True, 64),
    (197, False, False, True, 32),
])
def test_hgrn_fp32(N, reverse, h0, gated, chunk):
    _check(2, N, 24, h0=h0, reverse=reverse, gated=gated, chunk=chunk)


@pytest.mark.parametrize('reverse', [False, True])
def test_hgrn_varlen(reverse):
    _check(1, 75, 20, h0=True, reverse=reverse, cu=[0, 1, 8, 75])


@pytest.mark.parametrize('N,reverse,h0,gated,cu,segment', [
    (100, False, True, True, None, 32),          # 4 segments, the last one partial
    (100, True, True, False, None, 16),          # a segment a chunk
    (64, False, False, True, None, 32),          # segments that end where the sequence does
    (90, True, True, True, [0, 5, 40, 41, 90], 32),   # packed: sequences inside one segment and across three
    (90, False, False, False, [0, 70, 90], 48),  # a segment that is not a multiple of the chunk: rounded up
])
def test_hgrn_segments(N, reverse, h0, gated, cu, segment):
    _check(1 if cu else 2, N, 20, h0=h0, reverse=reverse, gated=gated, cu=cu, chunk=16, segment=segment)


def test_hgrn_segment_plan():
    """Segments where sequences x channel blocks fill few programs an SM; none where they fill enough, or where a
    segment would fall under min_segment tokens; the widest channel block where the sequence is split anyway."""
    seqs = SimpleNamespace(nseq=1, cu=torch.zeros(1, dtype=torch.int32))
    cpu = torch.device('cpu')        # one "SM" on the CPU: progs_per_sm is the number of programs aimed at
    for launch, N, D, want in [({'progs_per_sm': 64}, 2048, 16, (16, 512, 4)),          # capped by min_segment
                               ({'progs_per_sm': 3}, 2048, 16, (16, 688, 3)),
                               ({'progs_per_sm': 64, 'min_segment': 1024}, 2048, 16, (16, 1024, 2)),
                               ({'progs_per_sm': 4}, 2048, 64, (16, 2048, 1)),              # 4 channel blocks
                               ({'segment': 100}, 1000, 16, (16, 112, 9)),
                               # 16 channels would still split (2 segments): the widest block splits further
                               ({'progs_per_sm': 8}, 2048, 64, (64, 512, 4)),
                               ({'progs_per_sm': 8, 'block_d': 16}, 2048, 64, (16, 1024, 2)),
                               ({'segment': 10 ** 6}, 2048, 64, (16, 2048, 1)),            # unsplit: narrow
                               ({'block_d': 32}, 64, 64, (32, 64, 1))]:
        with kernel_options(launch={'hgrn': launch}):
            BD, seg, nseg, (sa, sb) = hgrn_scan._plan(N, D, seqs, 16, cpu)
        assert (BD, seg, nseg) == want
        assert sa.shape == ((1, nseg, D) if nseg > 1 else (1,))
        assert nseg == 1 or sa.data_ptr() != sb.data_ptr()


@pytest.mark.parametrize('strength', [-20.0, -1e-4])
def test_hgrn_strong_weak_decay(strength):
    _check(1, 50, 16, h0=True, reverse=strength < -1, strength=strength)


def test_hgrn_16bit_strong_gates():
    # log gates of -20: dL/dg = exp(g) (h_{t-1} - x_t) dh_t is ~1e-8, under half of fp16's smallest subnormal
    # (6e-8): in fp16 (g's dtype, so the gradient's) it is 0, and the kernel returns what the float64 gradient
    # rounds to (relative error 1.0 against the unrounded reference: fp16's range, not the kernel); bf16 holds it
    torch.manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(1, 40, 16).to(dtype).requires_grad_(True)
        g = torch.full((1, 40, 16), -20.).to(dtype).requires_grad_(True)
        o, ht = hgrn_triton(x, g, output_final_state=True, chunk_size=16)
        do, dht = torch.randn_like(o), torch.randn_like(ht)
        dg, = torch.autograd.grad((o * do).sum() + (ht * dht).sum(), g)
        xr, gr = (t.detach().double().requires_grad_(True) for t in (x, g))
        o2, ht2 = hgrn_recurrent_reference(xr, gr, output_final_state=True)
        dg2, = torch.autograd.grad((o2 * do.double()).sum() + (ht2 * dht.double()).sum(), gr)
        if dtype == torch.float16:
            assert dg2.abs().max() < 3e-8 and not dg.any()
        else:
            assert rel_err(dg, dg2) < 1e-2


def test_hgrn_bf16():
    _check(2, 70, 32, h0=True, reverse=True, dtype=torch.bfloat16)


def test_hgrn_public_op():
    x, g = torch.randn(2, 9, 8), F.logsigmoid(torch.randn(2, 9, 8))
    o, ht = hgrn(x, g, output_final_state=True)
    o2, ht2 = hgrn_recurrent_reference(x, g, output_final_state=True)
    assert torch.allclose(o, o2) and torch.allclose(ht, ht2)
    with pytest.raises(ValueError, match='g'):
        hgrn(x, g[:, :3])
    with pytest.raises(ValueError, match='initial_state'):
        hgrn(x, g, initial_state=torch.randn(3, 8))


def test_hgrn_strided_inputs():
    # x and g as views of one projection: the same bits as contiguous inputs (the forward's copies are kept, the
    # backward copies nothing again)
    xg = torch.randn(2, 20, 2, 12).requires_grad_(True)
    x, g = xg[:, :, 0], F.logsigmoid(xg[:, :, 1])
    assert not x.is_contiguous()
    do = torch.randn(2, 20, 12)
    o, _ = hgrn_triton(x, g, reverse=True, chunk_size=16)
    grads = torch.autograd.grad(o, (x, g), do)
    xc, gc = (t.detach().contiguous().requires_grad_(True) for t in (x, g))
    o2, _ = hgrn_triton(xc, gc, reverse=True, chunk_size=16)
    grads2 = torch.autograd.grad(o2, (xc, gc), do)
    assert torch.equal(o, o2) and all(torch.equal(a, b) for a, b in zip(grads, grads2))


@pytest.mark.parametrize('reverse', [False, True])
def test_reference_dense_batch_equals_packed(reverse):
    """The reference steps a dense batch all at once (the op's CPU path): the same as each sequence alone."""
    x, g = torch.randn(3, 9, 4, dtype=torch.float64), F.logsigmoid(torch.randn(3, 9, 4, dtype=torch.float64))
    h0 = torch.randn(3, 4, dtype=torch.float64)
    o, ht = hgrn_recurrent_reference(x, g, initial_state=h0, output_final_state=True, reverse=reverse)
    cu = torch.tensor([0, 9, 18, 27])
    o2, ht2 = hgrn_recurrent_reference(x.reshape(1, 27, 4), g.reshape(1, 27, 4), initial_state=h0,
                                       output_final_state=True, cu_seqlens=cu, reverse=reverse)
    torch.testing.assert_close(o, o2.reshape(3, 9, 4), rtol=0, atol=0)
    torch.testing.assert_close(ht, ht2, rtol=0, atol=0)
