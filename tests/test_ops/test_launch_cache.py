"""ops/common/launch.py: launches through the compiled kernel's cached handle. The cache logic runs here against
a stand-in for Triton's JITFunction / CompiledKernel (the compiled path needs a GPU: ``launch_cache='verify'``
in tools/check_ops_gpu.py checks it there); the signature is read from a real ``JITFunction``."""
import pytest
import torch
import triton
import triton.language as tl

from vla_mm.ops.common import KernelOptions, kernel_options
from vla_mm.ops.common import launch as L


class _Param:
    def __init__(self, name, is_constexpr=False, default=None):
        self.name, self.is_constexpr, self.default = name, is_constexpr, default


class _Compiled:
    """A compiled kernel: ``compiled[grid](*all_args)`` records the launch."""
    packed_metadata = ()

    def __init__(self, log):
        self.log = log

    def __getitem__(self, grid):
        return lambda *args: self.log.append(('cached', grid, args))


class _JitFn:
    """Triton's side: ``fn[grid](*args, **kw)`` binds, compiles once per specialisation, launches; ``run(...,
    warmup=True)`` returns the kernel Triton would launch."""
    __name__ = 'probe'

    def __init__(self):
        self.params = [_Param('x'), _Param('n'), _Param('eps'), _Param('BLOCK', True), _Param('FLAG', True, 0)]
        self.log, self.compiled = [], []
        self.choose = None

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(('triton', grid, args, kwargs))
            self.compiled.append(_Compiled(self.log))
            return self.compiled[-1]
        return run

    def run(self, *args, grid, warmup, **kwargs):
        assert warmup
        return self.choose


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setattr(L, 'interpreting', lambda: False)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    return L.Kernel(_JitFn())


def _kinds(k):
    return [e[0] for e in k.jit_fn.log]


def test_off_by_default_every_call_takes_triton(probe):
    x = torch.zeros(64)
    assert KernelOptions().launch_cache is False
    for _ in range(3):
        probe[(4,)](x, 64, 1e-5, BLOCK=32)
    assert _kinds(probe) == ['triton'] * 3 and not probe.cache


def test_a_repeated_specialisation_launches_the_cached_kernel_with_every_argument(probe):
    x, y = torch.zeros(64), torch.ones(64)
    with kernel_options(launch_cache=True):
        first = probe[(4,)](x, 64, 1e-5, BLOCK=32, num_warps=4)
        again = probe[(2, 3)](y, 32, 1e-3, BLOCK=32, num_warps=4)
    assert again is first and _kinds(probe) == ['triton', 'cached']
    # grid padded to three axes; the constexprs (given and default) in parameter order after the arguments
    assert probe.jit_fn.log[1][1:] == ((2, 3, 1), (y, 32, 1e-3, 32, 0))


@pytest.mark.parametrize('change', ['dtype', 'alignment', 'int_one', 'int_div16', 'int64', 'constexpr',
                                    'default_constexpr', 'num_warps'])
def test_any_change_triton_specialises_on_takes_triton(probe, change):
    """A new dtype, a pointer off 16-byte alignment, an integer that becomes 1, loses its divisibility by 16 or
    leaves int32, another constexpr (given or defaulted) or launch option: Triton's path, a new cache entry."""
    base = dict(x=torch.zeros(64), n=64, BLOCK=32, kw={})
    x, n, block, kw = base['x'], base['n'], base['BLOCK'], {}
    if change == 'dtype':
        x = torch.zeros(64, dtype=torch.float16)
    elif change == 'alignment':
        x = torch.zeros(65)[1:]
    elif change == 'int_one':
        n = 1
    elif change == 'int_div16':
        n = 65
    elif change == 'int64':
        n = 2 ** 33
    elif change == 'constexpr':
        block = 64
    elif change == 'default_constexpr':
        kw = dict(FLAG=1)
    elif change == 'num_warps':
        kw = dict(num_warps=8)
    with kernel_options(launch_cache=True):
        probe[(1,)](base['x'], base['n'], 0.5, BLOCK=base['BLOCK'])
        probe[(1,)](x, n, 0.5, BLOCK=block, **kw)
        probe[(1,)](x, n, 0.5, BLOCK=block, **kw)
    assert _kinds(probe) == ['triton', 'triton', 'cached'] and len(probe.cache) == 2


def test_verify_raises_when_triton_would_choose_another_kernel(probe):
    x = torch.zeros(64)
    with kernel_options(launch_cache='verify'):
        first = probe[(1,)](x, 64, 0.5, BLOCK=32)
        probe.jit_fn.choose = first
        probe[(1,)](x, 64, 0.5, BLOCK=32)
        probe.jit_fn.choose = object()
        with pytest.raises(RuntimeError, match='does not choose'):
            probe[(1,)](x, 64, 0.5, BLOCK=32)
    assert _kinds(probe) == ['triton', 'cached']


def test_callable_grid_interpreter_and_hooks_take_triton(probe, monkeypatch):
    x = torch.zeros(64)
    with kernel_options(launch_cache=True):
        probe[lambda meta: (1,)](x, 64, 0.5, BLOCK=32)
        probe[lambda meta: (1,)](x, 64, 0.5, BLOCK=32)
        monkeypatch.setattr(L, 'interpreting', lambda: True)
        interpreted = L.Kernel(probe.jit_fn)   # wrapped while the interpreter is on
        interpreted[(1,)](x, 64, 0.5, BLOCK=32)
        interpreted[(1,)](x, 64, 0.5, BLOCK=32)
    assert _kinds(probe) == ['triton'] * 4 and not probe.cache and not interpreted.cache


def test_launch_cache_option_values():
    assert KernelOptions(launch_cache='verify').launch_cache == 'verify'
    with pytest.raises(ValueError, match='launch_cache must be one of'):
        KernelOptions(launch_cache='yes')


def test_signature_of_a_real_jit_function():
    """The names, constexpr flags and defaults come from Triton's own ``JITFunction.params`` (compiled path)."""
    def probe(x_ptr, n, eps, BLOCK: tl.constexpr, FLAG: tl.constexpr = 0):
        pass
    k = L.Kernel(triton.runtime.jit.JITFunction(probe))
    names, constexpr, defaults = k._signature()
    assert names == ('x_ptr', 'n', 'eps', 'BLOCK', 'FLAG') and constexpr == (False, False, False, True, True)
    assert defaults['FLAG'] == 0
    assert k.fn is probe  # attributes reach the JITFunction



def test_triton_version_gates_the_cache(probe, monkeypatch):
    """Before triton 3.3 launchers took only the non-constexpr values: every call takes Triton's path there."""
    assert L.SUPPORTED and probe.cacheable  # this Triton
    monkeypatch.setattr(L, 'SUPPORTED', False)
    old = L.Kernel(probe.jit_fn)
    x = torch.zeros(64)
    with kernel_options(launch_cache=True):
        old[(1,)](x, 64, 0.5, BLOCK=32)
        old[(1,)](x, 64, 0.5, BLOCK=32)
    assert _kinds(probe) == ['triton'] * 2 and not old.cacheable


def test_our_key_never_meets_two_of_tritons_specialisations():
    """Against Triton's real binder (sm_90 target, no GPU needed): every launch of six ops' forward+backward,
    replayed with misaligned tensors and integers at 1 / 17 / 32 / 2**33 / 0 / -16, gives one Triton
    specialisation per key of ours (tests/test_ops/launch_key_check.py; a key without the alignment bit, or
    without the integer properties, fails it)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    proc = subprocess.run([sys.executable, os.path.join(root, 'tests', 'test_ops', 'launch_key_check.py')], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    calls, kernels = (int(w) for w in proc.stdout.split()[1:5:3])
    assert calls > 1000 and kernels >= 20, proc.stdout
