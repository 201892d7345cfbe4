"""What dtype the zoo's mixers hand our ops under autocast as CUDA runs it: CUDA autocast computes ``normalize``,
``exp``, ``softplus``, ``sum``, ``softmax``, ``cumsum`` and ``logcumsumexp`` in fp32 where CPU autocast keeps bf16
(emulated here), and the chunked kernels take their matmul precision from the first input's dtype (fp32: no tensor
cores). Session 14 found DeltaNet / Gated DeltaNet feeding the delta rule fp32 q, k, v that way."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tests.test_models.mixer_checks import make
from tests.test_models.test_zoo_matrix import OPTS, ZOO
from vla_mm.models.mixers.base import MixerContext
from vla_mm.ops.common import kernel_options

FP32_ON_CUDA = [(F, 'normalize'), (F, 'softplus'), (torch, 'exp'), (torch.Tensor, 'exp'), (torch.Tensor, 'sum'),
                (torch, 'softmax'), (torch.Tensor, 'softmax'), (torch.Tensor, 'cumsum'), (torch.Tensor, 'logcumsumexp')]


class OpInputs(TorchDispatchMode):
    """Records the dtypes of the tensor arguments of every ``vla_mm::`` op call (norms aside: their input is the
    fp32 residual stream by design)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith('vla_mm.') and 'norm' not in name and 'backward' not in name:
            self.calls.append((name, [a.dtype for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def _fp32_like_cuda(monkeypatch):
    for owner, name in FP32_ON_CUDA:
        real = getattr(owner, name)

        def up(x, *a, _r=real, **kw):
            if isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16 and torch.is_autocast_enabled('cpu'):
                x = x.float()
            return _r(x, *a, **kw)
        monkeypatch.setattr(owner, name, up)


CFGS = [dict(type=m, **OPTS.get(m, {})) for m in ZOO if m not in ('transformer', 'bitnet')] + [
    dict(type='deltanet', qk_norm='sum'), dict(type='gla', use_short_conv=True)]


@pytest.mark.parametrize('cfg', CFGS, ids=lambda c: '-'.join(f'{v}' for v in c.values()))
def test_mixers_hand_their_ops_the_autocast_dtype(cfg, monkeypatch):
    """q (the first tensor) and v (the third, where there is one) reach the op in bf16; gates may be fp32."""
    m = make(cfg, dim=32, num_heads=2).float()
    x = torch.randn(2, 6, 32, dtype=torch.bfloat16)  # a fused norm's output under autocast
    _fp32_like_cuda(monkeypatch)
    rec = OpInputs()
    with kernel_options(eager_path='custom_op'), torch.autocast('cpu', dtype=torch.bfloat16), rec:
        m(x, MixerContext(hw=(2, 3)))
    assert rec.calls, 'no op reached'
    for name, dts in rec.calls:
        data = [dts[0]] + ([dts[2]] if len(dts) >= 3 and 'short_conv' not in name else [])  # conv: x, w, b
        assert all(d == torch.bfloat16 for d in data), (name, dts)
