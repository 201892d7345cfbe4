"""Short convolution: Triton kernels (interpreter on CPU) against the float64 reference, and the reference
against torch's depthwise ``conv1d``.

Output and the gradients of x, weight and bias; relative error < 1e-5 (fp32), < 1e-2 (bf16); fresh random
inputs each run (seed printed); outputs start NaN-filled. Shapes cross token tiles, programs that walk several
tiles, several channel blocks, packed sequences shorter than the kernel and strided inputs.
"""
import pytest
import torch
import torch.nn.functional as F

from tests.test_ops.kernel_checks import poison, rel_err  # noqa: F401 (poison: an autouse fixture)
from vla_mm.ops.common import kernel_options
from vla_mm.ops.conv import MAX_W, short_conv, short_conv_reference, short_conv_triton

SMALL_TILES = {'short_conv_fwd': {'block_t': 16, 'block_c': 16}, 'short_conv_bwd': {'block_t': 16, 'block_c': 16}}


def _check(B, N, C, W=4, act='silu', reverse=False, bias=True, cu=None, dtype=torch.float32, strided=False):
    print(f'seed={torch.seed()}')
    cus = torch.tensor(cu) if cu is not None else None
    x = torch.randn(B, N, 2 * C)[..., :C] if strided else torch.randn(B, N, C)
    ins = [x.to(dtype), torch.randn(C, W) / W ** 0.5] + ([torch.randn(C)] if bias else [])
    ins = [t.requires_grad_(True) for t in ins]
    y = short_conv_triton(ins[0], ins[1], ins[2] if bias else None, act, reverse, cus)
    assert y.dtype == dtype and y.shape == (B, N, C)
    dy = torch.randn_like(y)
    gr = torch.autograd.grad((y * dy).sum(), ins)
    ref = [t.detach().double().requires_grad_(True) for t in ins]
    y2 = short_conv_reference(ref[0], ref[1], ref[2] if bias else None, act, reverse, cus)
    gr2 = torch.autograd.grad((y2 * dy.double()).sum(), ref)
    errs = {'y': rel_err(y, y2)}
    errs.update({n: rel_err(a, b) for n, a, b in zip(['dx', 'dw', 'db'], gr, gr2)})
    print(errs)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    bad = {n: e for n, e in errs.items() if not e < tol}
    assert not bad, f'relative error over {tol}: {bad}'


@pytest.mark.parametrize('N,W,act,reverse,bias', [
    (1, 4, 'silu', False, True),
    (3, 4, None, True, False),       # fewer tokens than taps
    (37, 4, 'silu', True, True),
    (70, 3, None, False, True),      # W not a power of two
    (70, 4, 'silu', False, False),
])
def test_short_conv_fp32(N, W, act, reverse, bias):
    with kernel_options(launch=SMALL_TILES):    # 16-token tiles: programs walk several of them
        _check(2, N, 40, W=W, act=act, reverse=reverse, bias=bias)


@pytest.mark.parametrize('reverse', [False, True])
def test_short_conv_packed(reverse):
    # sequences of 1, 2 and 3 tokens (under the 4 taps) beside longer ones, over tile boundaries
    with kernel_options(launch=SMALL_TILES):
        _check(1, 60, 24, cu=[0, 1, 3, 6, 29, 60], reverse=reverse)


def test_short_conv_bf16_strided_default_tiles():
    _check(2, 45, 96, dtype=torch.bfloat16, strided=True)


def test_reference_is_a_causal_depthwise_conv1d():
    x, w, b = torch.randn(2, 11, 6, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), \
        torch.randn(6, dtype=torch.float64)
    conv = F.conv1d(x.transpose(1, 2), w[:, None], b, padding=3, groups=6)[..., :11].transpose(1, 2)
    torch.testing.assert_close(short_conv_reference(x, w, b), conv)
    # reverse: the forward pass of the flipped sequence; packed: each sequence on its own
    torch.testing.assert_close(short_conv_reference(x, w, b, reverse=True),
                               short_conv_reference(x.flip(1), w, b).flip(1))
    cu = torch.tensor([0, 4, 11])
    packed = short_conv_reference(x[:1], w, b, 'silu', cu_seqlens=cu)
    each = torch.cat([short_conv_reference(x[:1, a:e], w, b, 'silu') for a, e in ((0, 4), (4, 11))], 1)
    torch.testing.assert_close(packed, each)


def test_cpu_call_runs_the_reference_and_checks_arguments():
    x, w = torch.randn(1, 5, 8), torch.randn(8, 4)
    torch.testing.assert_close(short_conv(x, w, activation='silu'), short_conv_reference(x, w, activation='silu'))
    with pytest.raises(ValueError, match='weight must be'):
        short_conv(x, torch.randn(8, MAX_W + 1))
    with pytest.raises(ValueError, match='activation'):
        short_conv(x, w, activation='gelu')
    with pytest.raises(ValueError, match='B == 1'):
        short_conv(torch.randn(2, 5, 8), w, cu_seqlens=torch.tensor([0, 5]))


@pytest.mark.parametrize('reverse,cu', [(False, None), (True, [0, 1, 3, 6, 29, 60])])
def test_short_conv_backward_with_shared_taps(reverse, cu):
    # the backward variant that reads the 2W - 1 tiles around its own once (launch option shared_taps)
    launch = {n: dict(v) for n, v in SMALL_TILES.items()}
    launch['short_conv_bwd']['shared_taps'] = True
    with kernel_options(launch=launch):
        _check(1 if cu else 2, 60, 24, reverse=reverse, cu=cu)
        _check(2, 37, 40, W=3, act='silu', reverse=not reverse, bias=False)
