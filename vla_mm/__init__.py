"""vla_mm: vision models with linear-attention, state-space and RWKV-style token mixers on MMEngine.

Importing ``vla_mm`` applies the compatibility fixes the OpenMMLab stack needs on modern PyTorch
(:mod:`vla_mm.compat`) and registers every module into the ``vla_mm`` registry scope
(:mod:`vla_mm.registry`): configs say ``custom_imports=dict(imports=['vla_mm'])`` and ``type='vla_mm.<Name>'``.
"""
import importlib.util as _ilu
import os.path as _osp
import sys as _sys

from .version import __version__


def _bind_source_ops():
    """Installed, ``ops/`` ships as ``vla_mm.ops`` (setup.py ``package_dir``). When vla_mm is imported straight
    from a source checkout that was never installed, bind the sibling ``ops/`` folder to that name instead."""
    if _ilu.find_spec(__name__ + '.ops') is not None:
        return
    src = _osp.join(_osp.dirname(_osp.dirname(_osp.abspath(__file__))), 'ops')
    init = _osp.join(src, '__init__.py')
    if _osp.isfile(init):
        spec = _ilu.spec_from_file_location(__name__ + '.ops', init, submodule_search_locations=[src])
        mod = _ilu.module_from_spec(spec)
        _sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)


_bind_source_ops()

from . import compat  # noqa: E402  (must run before mmpretrain / mmdet are imported)

compat.apply_all()

from . import engine, models  # noqa: E402,F401

__all__ = ['__version__']
