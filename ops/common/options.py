"""Launch settings of every kernel family in one place: a frozen :class:`KernelOptions` read through a context
manager (a ``contextvars`` variable, so settings are per thread / task and always restored)::

    with kernel_options(poison=True, launch={'fwd_A': dict(num_warps=2)}):
        o, _ = chunk_gla(q, k, v, g)

Nothing else in ``ops/`` holds launch state: caches keyed on device or shape are ``functools.lru_cache``.
An op's backward runs under the options its forward ran with (eager autograd). A ``torch.compile``d graph reads
them when it runs; the options that change what the forward keeps for the backward (``gla_a_path``,
``gla_keep_cumsum``, ``delta_rule_residuals``) must be the same when it runs as when it was traced.
"""
import contextlib
import contextvars
import dataclasses
import functools
import os
from types import MappingProxyType
from typing import Mapping

import torch

BACKENDS = ('auto', 'triton', 'reference')
EAGER_PATHS = ('function', 'custom_op')
LAUNCH_CACHE = (False, True, 'verify')
_LAUNCH_CACHE_ENV = {'': False, '0': False, '1': True, 'verify': 'verify'}
F32_OPERANDS = ('tf32', 'tf32x3')
RESIDUAL_DTYPES = ('fp32', 'input')


def _freeze(launch):
    return MappingProxyType({str(k): MappingProxyType(dict(v)) for k, v in dict(launch).items()})


@dataclasses.dataclass(frozen=True, eq=False)
class KernelOptions:
    """Settings of the Triton kernels (defaults are the production choices).

    Attributes:
        backend: ``'auto'`` (CUDA tensors -> Triton, others or ``VLA_OPS_REFERENCE=1`` -> the PyTorch reference),
            ``'triton'`` (the kernels whatever the device: CPU tensors need ``TRITON_INTERPRET=1``; float64 inputs
            still take the reference) or ``'reference'``.
        poison: fill every output buffer with NaN before the kernels write (tests: an unwritten element fails);
            ``VLA_OPS_POISON=1`` (read at import) sets the default.
        launch: per-kernel launch options by name, merged over each family's defaults (names in docs/ops.md):
            e.g. ``{'fwd_A': dict(num_warps=2)}`` (chunk_gla) or ``{'linear_attn': dict(block_n=64)}``.
        eager_path: how an eager call (no tracer, no dispatch mode) reaches the implementations:
            ``'function'`` (a ``torch.autograd.Function``: the least host time) or ``'custom_op'`` (the
            ``torch.library`` custom op that traced calls always take).
        gla_a_path: chunk_gla without value gates forms the intra-chunk scores once per chunk (the A path);
            False: the sub-block kernels for every call.
        gla_keep_cumsum: chunk_gla keeps the forward's chunk-local gate cumsums for the backward (False:
            recomputed there, less memory held between forward and backward).
        gla_bwd_fp32: 16-bit chunk_gla inputs: fp32 (tf32) operands in the backward's state / dq / dk kernels
            always (True), only where a gate gradient is taken (``'gate_grads'``, the default: without gates, or
            with gates that need no gradient such as RetNet's decays, 16-bit operands and states as in the
            forward), or never (False).
        gla_f32_operands: how those fp32 operands meet the tensor cores: ``'tf32'`` or ``'tf32x3'``.
        delta_rule_residuals: 16-bit delta_rule inputs: dtype of the per-token / per-chunk intermediates W, U~,
            U and the chunk states (the forward's traffic and what it keeps for the backward): ``'input'`` (the
            default: the inputs' 16-bit dtype, as fla keeps them; arithmetic stays fp32) or ``'fp32'``.
        launch_cache: launch kernels through the compiled kernel's cached handle (``ops/common/launch.py``):
            False, True, or ``'verify'`` (also check every hit against Triton's own choice); default from
            ``VLA_OPS_LAUNCH_CACHE`` (``1`` / ``verify``), off until the GPU check has run.
    """
    backend: str = 'auto'
    poison: bool = dataclasses.field(
        default_factory=lambda: os.environ.get('VLA_OPS_POISON', '0') not in ('', '0'))
    launch: Mapping = dataclasses.field(default_factory=dict)
    eager_path: str = 'function'
    gla_a_path: bool = True
    gla_keep_cumsum: bool = True
    gla_bwd_fp32: object = 'gate_grads'
    gla_f32_operands: str = 'tf32'
    delta_rule_residuals: str = 'input'
    launch_cache: object = dataclasses.field(
        default_factory=lambda: _LAUNCH_CACHE_ENV.get(os.environ.get('VLA_OPS_LAUNCH_CACHE', ''), False))

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f'backend must be one of {BACKENDS}, got {self.backend!r}')
        if self.eager_path not in EAGER_PATHS:
            raise ValueError(f'eager_path must be one of {EAGER_PATHS}, got {self.eager_path!r}')
        if self.gla_f32_operands not in F32_OPERANDS:
            raise ValueError(f'gla_f32_operands must be one of {F32_OPERANDS}, got {self.gla_f32_operands!r}')
        if self.delta_rule_residuals not in RESIDUAL_DTYPES:
            raise ValueError(f'delta_rule_residuals must be one of {RESIDUAL_DTYPES}, '
                             f'got {self.delta_rule_residuals!r}')
        if not (isinstance(self.gla_bwd_fp32, bool) or self.gla_bwd_fp32 == 'gate_grads'):
            raise ValueError(f"gla_bwd_fp32 must be True, False or 'gate_grads', got {self.gla_bwd_fp32!r}")
        if not (isinstance(self.launch_cache, bool) or self.launch_cache == 'verify'):
            raise ValueError(f'launch_cache must be one of {LAUNCH_CACHE}, got {self.launch_cache!r}')
        object.__setattr__(self, 'launch', _freeze(self.launch))
        launch = tuple(sorted((n, tuple(sorted(v.items()))) for n, v in self.launch.items()))
        object.__setattr__(self, '_key', tuple((f.name, launch if f.name == 'launch' else getattr(self, f.name))
                                              for f in dataclasses.fields(self)))

    def launch_for(self, *names):
        """The launch entries of ``names`` merged in order (later names win)."""
        out = {}
        for n in names:
            out.update(self.launch.get(n, {}))
        return out

    def settings(self, name, defaults):
        """A kernel's launch settings: ``defaults`` under ``launch[name]``."""
        return {**defaults, **self.launch_for(name)}

    def key(self):
        """A hashable form (for caches of launch plans)."""
        return self._key

    def __eq__(self, other):
        return isinstance(other, KernelOptions) and self.key() == other.key()

    def __hash__(self):
        return hash(self.key())


# launch entry name -> the keys it takes; each family declares its names once, at import (declare_launch)
_LAUNCH_KEYS = {}
TRITON_LAUNCH_KEYS = ('num_warps', 'num_stages', 'maxnreg')


def declare_launch(keys, *names):
    """Declare launch entry ``names`` a family reads and the ``keys`` each takes; :func:`kernel_options`
    refuses any other name or key (a misspelt entry would otherwise be ignored without a word)."""
    for n in names:
        _LAUNCH_KEYS[n] = tuple(sorted(keys))


@functools.lru_cache(maxsize=None)
def _import_families():
    """Import every module of every op family (their declarations come with them)."""
    import importlib
    import pkgutil
    parent = __name__.rsplit('.', 2)[0]
    for info in pkgutil.walk_packages(importlib.import_module(parent).__path__, prefix=parent + '.'):
        importlib.import_module(info.name)


def check_launch(launch):
    """ValueError for a ``launch`` entry no family declared, or a key its kernel does not take."""
    if any(name not in _LAUNCH_KEYS for name in launch):
        _import_families()
    for name, entry in launch.items():
        if name not in _LAUNCH_KEYS:
            raise ValueError(f'launch: no kernel reads {name!r}; declared names: {sorted(_LAUNCH_KEYS)}')
        unknown = set(entry) - set(_LAUNCH_KEYS[name])
        if unknown:
            raise ValueError(f'launch[{name!r}] takes {list(_LAUNCH_KEYS[name])}, got {sorted(unknown)}')


_OPTIONS = contextvars.ContextVar('vla_mm_kernel_options', default=KernelOptions())
_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(KernelOptions))


def current_options() -> KernelOptions:
    return _OPTIONS.get()


@contextlib.contextmanager
def kernel_options(options: KernelOptions = None, **changes):
    """Run the block under ``options`` (default: the current ones) with ``changes`` applied; ``launch`` entries
    are merged by name over the current ones. Yields the options in force."""
    base = current_options() if options is None else options
    unknown = set(changes) - _OPTION_NAMES
    if unknown:
        raise ValueError(f'unknown kernel option(s) {sorted(unknown)}; known: '
                         f'{[f.name for f in dataclasses.fields(KernelOptions)]}')
    if 'launch' in changes:
        changes['launch'] = {**base.launch, **changes['launch']}
    new = dataclasses.replace(base, **changes) if changes else base
    check_launch(new.launch)
    token = _OPTIONS.set(new)
    try:
        yield new
    finally:
        _OPTIONS.reset(token)


@functools.cache
def interpreting() -> bool:
    """Is Triton's CPU interpreter on (``TRITON_INTERPRET=1``)? Kernels then emulate what it computes wrongly.
    Read once: Triton fixes interpreted or compiled when it wraps a kernel at import, so a later change of the
    variable could only disagree with the kernels (and the lookup sat on every launch's host path)."""
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')


def alloc(shape, dtype, device):
    """An output buffer: ``torch.empty``, or NaN-filled under ``poison``."""
    if current_options().poison:
        return torch.full(shape, float('nan'), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def rows_of(t, C):
    """``t`` as ``[M, C]`` rows with unit column stride (a view when the layout allows, else a copy)."""
    t2 = t.reshape(-1, C)
    return t2 if t2.stride(-1) == 1 or t2.shape[0] == 0 else t2.contiguous()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of host integers (grids, blocks): plain Python, where ``triton.cdiv`` is a constexpr function
    whose call wrapper costs microseconds on every launch."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), plain Python like :func:`cdiv`."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 for any other device)."""
    if device.type != 'cuda':
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=None)
def dummy(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A one-element tensor to pass for a pointer argument a kernel does not read."""
    return torch.empty(1, dtype=dtype, device=device)
