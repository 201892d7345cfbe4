"""What the kernel tests share: output buffers NaN-filled (an element a kernel never writes fails the check) and
the relative error against a float64 reference."""
import pytest
import torch

from vla_mm.ops.common import kernel_options


@pytest.fixture(autouse=True)
def poison():
    """Imported by a test module, runs every test of it under ``kernel_options(poison=True)``, from a fresh random
    seed (printed: a failure can be replayed with ``torch.manual_seed``)."""
    print(f'seed {torch.seed()}')
    with kernel_options(poison=True):
        yield


def rel_err(a, b):
    """``||a - b|| / ||b||`` in float64; a non-finite ``a`` fails."""
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), 'non-finite values (unwritten or overflowed)'
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()
