"""Sum over rows: the Triton kernel (interpreter on CPU) against the float64 reference; rows split over several
programs, ragged tiles, strided rows, 16-bit inputs; outputs start NaN-filled."""
import pytest
import torch

from tests.test_ops.kernel_checks import poison, rel_err  # noqa: F401 (poison: an autouse fixture)
from vla_mm.ops.common import kernel_options
from vla_mm.ops.reduce import sum_rows, sum_rows_reference, sum_rows_triton


@pytest.mark.parametrize('shape,launch', [
    ((1, 1), {}),
    ((7, 3), {}),
    ((2, 70, 40), {'block_m': 8, 'block_n': 16, 'progs_per_sm': 3}),   # 3 column blocks x several row ranges
    ((300, 257), {'block_m': 16, 'block_n': 64}),
])
def test_sum_rows_fp32(shape, launch):
    print(f'seed={torch.seed()}')
    x = torch.randn(*shape)
    with kernel_options(launch={'sum_rows': launch}):
        y = sum_rows_triton(x)
    assert y.dtype == torch.float32 and y.shape == (shape[-1],)
    assert rel_err(y, sum_rows_reference(x.double())) < 1e-6


def test_sum_rows_bf16_strided_rows_and_gradient():
    x = torch.randn(3, 41, 96).bfloat16()[..., :80]           # rows 96 apart: read in place
    torch.testing.assert_close(sum_rows_triton(x), sum_rows_reference(x.double()).float(), rtol=1e-5, atol=1e-4)
    x = torch.randn(10, 6, requires_grad=True)
    g = torch.randn(6)
    (sum_rows_triton(x) * g).sum().backward()
    torch.testing.assert_close(x.grad, g.expand(10, 6))


def test_cpu_call_runs_the_reference_and_checks_arguments():
    x = torch.randn(4, 5)
    torch.testing.assert_close(sum_rows(x), x.sum(0))
    assert sum_rows(x.double()).dtype == torch.float64
    with pytest.raises(ValueError, match='x must be'):
        sum_rows(torch.randn(4, 0))
