"""Triton launches through the compiled kernel's cached handle (``kernel_options(launch_cache=...)``).

``kernel[grid](*args, **kwargs)`` on a ``@triton.jit`` function binds and specialises every argument, hashes a
cache key and looks the compiled kernel up on every call: ~100 µs of host time per launch on the GPU machine's
host (cProfile, docs/benchmarks.md, session 12), against ~30 µs for the driver launch itself. :func:`jit`
wraps a launched kernel so that, with ``launch_cache`` on, a call whose arguments specialise as an earlier
call's did (same dtypes, pointer alignment, integer properties, constexprs and launch options) launches that
call's :class:`triton.compiler.CompiledKernel` directly (``compiled[grid](*args)``); any other call takes
Triton's own path and fills the cache. The key is finer than Triton's (every pointer's 16-byte alignment, every
integer's ``== 1`` / ``% 16`` / int32 range whatever ``do_not_specialize`` says), so a hit never launches a kernel
that Triton would not have chosen; ``launch_cache='verify'`` also asks Triton for its kernel on every hit and
raises if it differs (the GPU check of this module). The compiled kernel's own launcher runs Triton's launch
hooks (profilers) as Triton's path does. Under the interpreter or with a callable grid every call takes Triton's
path.
"""
import torch
import triton

from .options import current_options, interpreting

_INT32 = (-2 ** 31, 2 ** 31)
# since triton 3.3 a compiled kernel's launcher takes every parameter's value, constexprs included (before: only
# the others); older versions keep Triton's own path
SUPPORTED = tuple(int(x) for x in triton.__version__.split('.')[:2]) >= (3, 3)


def _spec(v):
    """What Triton's specialisation can read off a non-constexpr argument (a superset of it)."""
    if isinstance(v, torch.Tensor):
        return v.dtype, v.data_ptr() % 16 == 0
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return int, v == 1, v % 16 == 0, _INT32[0] <= v < _INT32[1], v < 0
    if isinstance(v, float):
        return float
    return v


class Kernel:
    """A launched ``@triton.jit`` function with a per-device cache of compiled kernels (module docstring).
    Attribute access reaches the wrapped ``JITFunction`` (``.fn``, ``.run``, ``.params`` ...)."""

    def __init__(self, fn):
        self.jit_fn = fn
        self.cache = {}
        self._params = None
        # Triton decides interpreted or compiled when it wraps the function; so does the cache
        self.cacheable = SUPPORTED and not interpreting()

    def _signature(self):
        """(names, constexpr flags, defaults) of the parameters; read on the first cached launch (Triton's
        interpreter, which never gets here, wraps the function without them)."""
        if self._params is None:
            ps = self.jit_fn.params
            self._params = (tuple(p.name for p in ps), tuple(p.is_constexpr for p in ps),
                            {p.name: p.default for p in ps})
        return self._params

    def __getattr__(self, name):
        if name == 'jit_fn':  # not set yet (copy / unpickling)
            raise AttributeError(name)
        return getattr(self.jit_fn, name)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def bind(self, args, kwargs):
        """(every parameter's value in order, the launch options as a sorted tuple)."""
        names, _, defaults = self._signature()
        vals = list(args)
        for name in names[len(args):]:
            vals.append(kwargs[name] if name in kwargs else defaults[name])
        opts = tuple(sorted((k, v) for k, v in kwargs.items() if k not in defaults))
        return vals, opts

    def key(self, vals, opts, device):
        """The cache key of a bound call (:meth:`bind`) on ``device``: constexprs by value, the other arguments
        by what Triton's specialisation reads off them (``_spec``)."""
        return (device, opts) + tuple(v if c else _spec(v) for v, c in zip(vals, self._signature()[1]))

    def launch(self, grid, args, kwargs):
        mode = current_options().launch_cache
        if not mode or not self.cacheable or callable(grid):
            return self.jit_fn[grid](*args, **kwargs)
        vals, opts = self.bind(args, kwargs)
        try:
            key = self.key(vals, opts, torch.cuda.current_device())
            compiled = self.cache.get(key)
        except TypeError:  # an unhashable constexpr: Triton's path
            return self.jit_fn[grid](*args, **kwargs)
        if compiled is None:
            compiled = self.jit_fn[grid](*args, **kwargs)
            if hasattr(compiled, 'packed_metadata'):
                self.cache[key] = compiled
            return compiled
        if mode == 'verify':
            theirs = self.jit_fn.run(*args, grid=grid, warmup=True, **kwargs)
            if theirs is not compiled:
                raise RuntimeError(f'launch cache of {self.jit_fn.__name__}: key {key} found a kernel that Triton '
                                   'does not choose for these arguments')
        grid = tuple(grid) + (1,) * (3 - len(grid))
        compiled[grid](*vals)
        return compiled


def jit(fn=None, **kwargs):
    """``triton.jit`` for a kernel that the host launches: the :class:`Kernel` wrapper of the ``JITFunction``."""
    if fn is None:
        return lambda f: Kernel(triton.jit(f, **kwargs))
    return Kernel(triton.jit(fn, **kwargs))
