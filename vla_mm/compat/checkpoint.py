"""Safe checkpoint loading for MMEngine on torch >= 2.6.

torch >= 2.6 loads with ``weights_only=True``. Checkpoints written by mmengine 0.10.7 hold, besides tensors,
``mmengine.logging.history_buffer.HistoryBuffer`` objects and numpy arrays / scalars / dtypes in their
``message_hub``, which the weights-only unpickler refuses. The fix here allows *exactly* those globals
(:func:`allowed_checkpoint_globals`) and keeps ``weights_only=True`` for every load, on every torch version.
A checkpoint that holds anything else is refused with :class:`CheckpointLoadError` before any of its code
runs; a truncated or corrupt file gives the same error type naming the file.

The loader is installed as MMEngine's local-file scheme, so ``load_from``, ``resume``, ``init_cfg=Pretrained``
and ``tools/test.py`` all go through it.
"""
import importlib
import os
import pickle
import re
import zipfile

import torch


class CheckpointLoadError(RuntimeError):
    """A checkpoint could not be loaded safely (missing, corrupt or holding disallowed objects)."""


_extra_globals = []


def _numpy_globals():
    import numpy as np
    found = [np.ndarray, np.dtype]
    # numpy 2.x pickles through numpy._core, numpy 1.x through numpy.core
    for modname in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            mod = importlib.import_module(modname)
        except Exception:  # pragma: no cover - depends on the numpy version
            continue
        for attr in ('_reconstruct', 'scalar'):
            if hasattr(mod, attr):
                found.append(getattr(mod, attr))
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25: one class per dtype (Float64DType, ...)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes)
                  if n.endswith('DType') and isinstance(getattr(dtypes, n), type)]
    # numpy scalar types that message_hub values may carry
    found += [np.float64, np.float32, np.float16, np.int64, np.int32, np.bool_]
    return found


def _history_buffer_getattr(obj, name):
    """Stand-in for ``builtins.getattr`` in checkpoints: HistoryBuffer pickles its statistics methods as
    ``getattr(HistoryBuffer, 'min')`` etc. Only those lookups are allowed; anything else is refused."""
    from mmengine.logging.history_buffer import HistoryBuffer
    # the built-in statistics are registered on the class by the first HistoryBuffer() only: name them here too,
    # or a fresh process (tools/test.py, init_cfg=Pretrained) refuses every MMEngine checkpoint
    known = set(HistoryBuffer._statistics_methods) | {'min', 'max', 'current', 'mean'}
    if obj is HistoryBuffer and isinstance(name, str) and name in known:
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'Unsupported global: GLOBAL getattr({obj!r}, {name!r}) is not allowed')


def allowed_checkpoint_globals():
    """The non-tensor globals an MMEngine checkpoint may hold: HistoryBuffer (with the ``getattr`` of its
    statistics methods, and nothing else), numpy arrays, dtypes and scalars."""
    from mmengine.logging.history_buffer import HistoryBuffer
    return ([HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')] + _numpy_globals()
            + list(_extra_globals))


def allow_checkpoint_globals(*objs):
    """Extend the allowlist with further classes/functions (an explicit, reviewed decision of the caller)."""
    _extra_globals.extend(objs)
    torch.serialization.add_safe_globals(list(objs))


def safe_torch_load(filename, map_location=None):
    """``torch.load(filename, weights_only=True)`` with the MMEngine allowlist and clear errors."""
    filename = os.fspath(filename)
    if not os.path.isfile(filename):
        raise CheckpointLoadError(f'checkpoint file not found: {filename}')
    if not os.access(filename, os.R_OK):
        raise CheckpointLoadError(f'checkpoint file is not readable: {filename}')
    try:
        torch.serialization.add_safe_globals(allowed_checkpoint_globals())
        return torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if not re.search(r'Unsupported global|unsupported GLOBAL|not an allowed global|blocked|Trying to call reduce|'
                         r'Can only create new object|Unsupported class', msg):
            detail = re.search(r'WeightsUnpickler error:\s*(.+?)(?:\n\n|$)', msg, re.S)
            detail = detail.group(1).strip() if detail else (msg.strip().splitlines() or ['unreadable pickle'])[0]
            raise CheckpointLoadError(
                f'checkpoint {filename} is truncated or corrupt and could not be read ({detail})') from None
        m = re.search(r'GLOBAL\s+([\w.]+(?:\([^)]*\))?)', msg) or re.search(r'function (\S+)', msg)
        what = m.group(1) if m else 'an object outside the allowlist'
        raise CheckpointLoadError(
            f'refusing to load checkpoint {filename}: it holds {what}, which is not on vla_mm\'s allowlist of '
            f'checkpoint globals (tensors, HistoryBuffer, numpy arrays/dtypes). Nothing in it was executed. '
            f'If you trust this file and know the class is safe, add it with '
            f'vla_mm.compat.checkpoint.allow_checkpoint_globals(...).') from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointLoadError(
            f'checkpoint {filename} is truncated or corrupt and could not be read ({first})') from None


def _load_from_local(filename, map_location):
    """Replacement for ``mmengine.runner.checkpoint.load_from_local`` (local paths, no URL prefix)."""
    filename = os.path.expanduser(filename)
    return safe_torch_load(filename, map_location=map_location)


def install_safe_checkpoint_loading():
    """Register the safe loader as MMEngine's local-file scheme (idempotent)."""
    torch.serialization.add_safe_globals(allowed_checkpoint_globals())  # torch >= 2.4
    from mmengine.runner import checkpoint as ckpt_mod
    ckpt_mod.CheckpointLoader.register_scheme(prefixes='', loader=_load_from_local, force=True)
    ckpt_mod.load_from_local = _load_from_local
