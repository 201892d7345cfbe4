"""No host round trip inside a call: every public op and every mixer of the zoo in the isotropic backbone, run
forward with inputs that need gradients on fake CUDA tensors (``FakeTensorMode``: no GPU needed, no kernel runs),
makes no host-to-device copy and reads no value back to the host (the backward cannot run on fake CUDA tensors
without a GPU: autograd's engine asks the driver for the device). Either breaks a CUDA-graph capture
(``torch.compile(mode='reduce-overhead')``) and stalls the stream; ``chunk_retention`` made such a copy every call
until session 18. Packed sequences are exempt: their chunk tables are planned on the host from ``cu_seqlens``."""
import os.path as osp

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import vla_mm  # noqa: F401
from tests.scripts import load_script
from vla_mm.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BENCH = load_script(osp.join(ROOT, 'tools', 'benchmarks', 'ops.py'), 'bench_ops_specs')
SPECS = [s for s in BENCH._specs().values() if s.ours is not None and 'packed' not in s.name and 'varlen' not in s.name]
ZOO = ('abc', 'bitnet', 'deltanet', 'gated_deltanet', 'gla', 'gsa', 'hgrn', 'hgrn2', 'lightnet', 'linear_attn',
       'retnet', 'rwkv6', 'transformer')


class HostTraffic(TorchDispatchMode):
    """Records copies from host to device and reads of a device value back to the host."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default:
            dst = kwargs.get('device')
            if dst is not None and args[0].device.type != torch.device(dst).type:
                self.seen.append(f'{func}: {args[0].device} -> {dst} {tuple(args[0].shape)}')
        elif func is torch.ops.aten.copy_.default and args[0].device.type != args[1].device.type:
            self.seen.append(f'{func}: {args[1].device} -> {args[0].device} {tuple(args[1].shape)}')
        elif func is torch.ops.aten._local_scalar_dense.default:
            self.seen.append(f'{func}: .item() of a {args[0].device} tensor')
            return 0    # a fake tensor holds no value to read
        return func(*args, **kwargs)


def _run_fake(make, run):
    """``run(make())`` under fake CUDA tensors: ``make`` builds real tensors and modules on the host, which become
    fake CUDA ones before recording starts; the host traffic ``run`` made."""
    traffic = HostTraffic()
    args = make()
    with FakeTensorMode(allow_non_fake_inputs=True):
        args = {n: x.to('cuda') if torch.is_tensor(x) or isinstance(x, torch.nn.Module) else x
                for n, x in args.items()}
        with traffic:
            run(args)
    return traffic.seen


@pytest.mark.parametrize('spec', SPECS, ids=[s.name for s in SPECS])
def test_op_call_stays_on_the_device(spec):
    def run(x):
        for n in spec.grads:
            if x.get(n) is not None:
                x[n].requires_grad_()
        spec.ours(x)

    assert _run_fake(lambda: spec.make(1, 2, 64, 16, 16, torch.bfloat16, 'cpu'), run) == []


@pytest.mark.parametrize('route', ('uni', 'bi', 'cross', 'mh2d'))
@pytest.mark.parametrize('mixer', ZOO)
def test_model_step_stays_on_the_device(mixer, route):
    cfg = dict(type='vla_mm.IsotropicBackbone', arch=dict(embed_dims=32, num_layers=2, num_heads=4, mlp_ratio=1.0),
               img_size=(12, 20), patch_size=4, mixer=dict(type=mixer, num_slots=4) if mixer in ('abc', 'gsa') else
               dict(type=mixer), out_type='featmap', scan=None if route == 'uni' else dict(type=route))

    def run(a):
        a['model'](a['x'].requires_grad_())

    assert _run_fake(lambda: dict(model=MODELS.build(cfg), x=torch.randn(2, 3, 12, 20)), run) == []


def test_the_check_sees_a_host_copy():
    """The check itself: a decay built on the host and copied over, as ``chunk_retention`` did, is reported."""
    def run(a):
        h = torch.arange(4, dtype=torch.float64)
        (a['x'] * h.to('cuda')).sum().item()

    seen = _run_fake(lambda: dict(x=torch.randn(4)), run)
    assert len(seen) == 2 and 'cpu -> cuda' in seen[0] and '.item()' in seen[1], seen


def test_hierarchical_step_stays_on_the_device():
    """The pyramid backbone too: four stages with four mixer families, downsampling between them."""
    from vla_mm.models.backbones import HierarchicalBackbone
    mixers = [dict(type='gla'), dict(type='rwkv6'), dict(type='gated_deltanet'), dict(type='hgrn')]

    def make():
        m = HierarchicalBackbone(arch='nano', img_size=64, mixer=mixers, scan=dict(type='cross'))
        m.init_weights()
        return dict(model=m, x=torch.randn(2, 3, 64, 96))

    assert _run_fake(make, lambda a: a['model'](a['x'].requires_grad_())) == []
