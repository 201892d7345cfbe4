"""BiasGradLinear: nn.Linear whose eager CUDA backward takes the bias gradient from the sum_rows op. On CPU the
layer is nn.Linear; its autograd function is run here directly with the op's Triton kernel (interpreter)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from vla_mm.models.layers import BiasGradLinear, build_ffn, use_bias_grad_op
from vla_mm.models.layers.linear import _LinearBiasGrad
from vla_mm.ops.common import kernel_options


def _grads(fn, *ts):
    leaves = [t.detach().clone().requires_grad_() for t in ts]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    return [out] + list(torch.autograd.grad(out, leaves, g))


def test_function_equals_linear_fp32_and_in_the_autocast_dtype():
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 9, 12, generator=gen), torch.randn(20, 12, generator=gen), torch.randn(20, generator=gen)
    with kernel_options(backend='triton'):   # the bias gradient from the sum_rows kernel (interpreter)
        ours = _grads(lambda x, w, b: _LinearBiasGrad.apply(x, w, b, torch.float32), x, w, b)
        ours16 = _grads(lambda x, w, b: _LinearBiasGrad.apply(x, w, b, torch.bfloat16), x, w, b)
    ref = _grads(F.linear, x, w, b)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    # bf16: the output and the input / weight gradients as autocast's bf16 matmuls give them, in the leaves'
    # dtypes; the bias gradient summed in fp32 (autocast's is a bf16 sum)
    ref16 = _grads(lambda x, w, b: F.linear(x.bfloat16(), w.bfloat16(), b.bfloat16()), x, w, b)
    assert ours16[0].dtype == torch.bfloat16 and [t.dtype for t in ours16[1:]] == [torch.float32] * 3
    for a, r in zip(ours16, ref16):
        torch.testing.assert_close(a.float(), r.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours16[3], ref[3], rtol=1e-2, atol=1e-2)


def test_layer_is_linear_off_cuda_and_swap_keeps_parameters():
    ffn = build_ffn('mlp', 8, 16)
    before = {k: v.clone() for k, v in ffn.state_dict().items()}
    x = torch.randn(2, 5, 8)
    y = ffn(x, identity=x)
    use_bias_grad_op(ffn)
    linears = [m for m in ffn.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 and all(type(m) is BiasGradLinear for m in linears)
    assert ffn.state_dict().keys() == before.keys() and all(torch.equal(ffn.state_dict()[k], v)
                                                            for k, v in before.items())
    torch.testing.assert_close(ffn(x, identity=x), y)
    lin = BiasGradLinear(8, 4)
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias))
