"""What ``tools/train.py`` and ``tools/test.py`` share: config loading with checked overrides, input checks that
turn bad input into one clear line, and the runner set-up common to training and testing."""
import difflib
import os
import os.path as osp
import re
import sys

from mmengine.config import Config, ConfigDict


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with exit code 2, no traceback."""


def fail(msg, code=2):
    print(f'error: {msg}', file=sys.stderr)
    sys.exit(code)


def close_distributed():
    """End a distributed run cleanly: every rank waits for the others, then the process group is destroyed.

    Left to interpreter exit, the gloo process group is torn down while its threads may still run, and now and
    then a rank aborts after training has finished ('terminate called without an active exception', SIGABRT),
    which fails the whole torchrun job."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------- config
def _lookup(node, parts):
    """Return (found, parent_keys) for the dotted key ``parts`` inside a config dict/list."""
    for depth, part in enumerate(parts):
        if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            siblings = list(node.keys()) if isinstance(node, dict) else []
            return False, depth, siblings
    return True, len(parts), []


def check_cfg_options(cfg, options):
    """Every ``--cfg-options`` key must exist in the config. A key prefixed with ``+`` adds a new entry.

    Returns the options with the ``+`` markers removed.
    """
    checked = {}
    for key, value in (options or {}).items():
        if key.startswith('+'):
            checked[key[1:]] = value
            continue
        parts = key.split('.')
        found, depth, siblings = _lookup(cfg._cfg_dict, parts)
        if not found:
            where = '.'.join(parts[:depth]) or '<top level>'
            close = difflib.get_close_matches(parts[depth], [str(s) for s in siblings], n=3, cutoff=0.5)
            hint = f'; did you mean {", ".join(".".join(parts[:depth] + [c]) for c in close)}?' if close else ''
            raise UserError(f"--cfg-options key '{key}' does not exist in the config (no '{parts[depth]}' under "
                            f"{where}){hint} To add a new key on purpose, write it as '+{key}=...'.")
        checked[key] = value
    return checked


def load_config(path, cfg_options=None):
    if not osp.isfile(path):
        close = ''
        d = osp.dirname(path) or '.'
        if osp.isdir(d):
            m = difflib.get_close_matches(osp.basename(path), os.listdir(d), n=3, cutoff=0.6)
            close = f'; close matches in {d}: {", ".join(m)}' if m else ''
        raise UserError(f'config file not found: {path}{close}')
    try:
        cfg = Config.fromfile(path)
    except Exception as e:  # syntax errors, missing _base_ files, ...
        raise UserError(f'could not read config {path}: {type(e).__name__}: {str(e).splitlines()[0]}') from None
    if cfg_options:
        cfg.merge_from_dict(check_cfg_options(cfg, cfg_options))
    return cfg


# --------------------------------------------------------------------------------------------- inputs
def check_checkpoint(path, what='checkpoint'):
    if path is None:
        return
    if '://' in str(path):  # URLs and other schemes are for MMEngine's loaders to fetch
        return
    if not osp.exists(path):
        raise UserError(f'{what} not found: {path}')
    if not osp.isfile(path):
        raise UserError(f'{what} is not a file: {path}')
    if not os.access(path, os.R_OK):
        raise UserError(f'{what} is not readable: {path}')
    if osp.getsize(path) == 0:
        raise UserError(f'{what} is empty: {path}')


def _datasets(cfg_ds):
    """Yield the leaf dataset configs of (possibly wrapped / concatenated) dataset configs."""
    if isinstance(cfg_ds, dict):
        if 'datasets' in cfg_ds:
            for d in cfg_ds['datasets']:
                yield from _datasets(d)
        elif 'dataset' in cfg_ds:
            yield from _datasets(cfg_ds['dataset'])
        else:
            yield cfg_ds
    elif isinstance(cfg_ds, (list, tuple)):
        for d in cfg_ds:
            yield from _datasets(d)


def check_data_roots(cfg, loaders=('train_dataloader', 'val_dataloader', 'test_dataloader')):
    """A real dataset's directory must exist and hold files; the synthetic shapes data is generated on use."""
    for name in loaders:
        loader = cfg.get(name)
        if not loader:
            continue
        for ds in _datasets(loader.get('dataset')):
            if str(ds.get('type', '')).split('.')[-1].startswith('Shapes'):
                continue  # generated on first use
            root = ds.get('data_root')
            if not root:
                continue
            if not osp.isdir(root):
                raise UserError(f'dataset directory not found: {root} ({name}.dataset.data_root); '
                                f'see tools/prepare_data.py check')
            if not os.listdir(root):
                raise UserError(f'dataset directory is empty: {root} ({name}.dataset.data_root); '
                                f'see tools/prepare_data.py check')


# --------------------------------------------------------------------------------------------- errors
_NOT_REGISTERED = re.compile(r'(\S+) is not in the (?:(\w+)::)?([\w ]+?) registry')


def _registered_names(registry_name):
    """All names registered in registries called ``registry_name`` anywhere in the registry tree."""
    import vla_mm.registry as vreg
    from mmengine import registry as mreg
    roots = [getattr(mreg, n) for n in dir(mreg) if isinstance(getattr(mreg, n), mreg.Registry)]
    roots += [getattr(vreg, n) for n in dir(vreg) if isinstance(getattr(vreg, n), mreg.Registry)]
    for lib in ('mmpretrain', 'mmseg', 'mmdet'):
        try:
            mod = __import__(f'{lib}.registry', fromlist=['x'])
            roots += [getattr(mod, n) for n in dir(mod) if isinstance(getattr(mod, n), mreg.Registry)]
        except ImportError:
            pass
    names = set()
    seen = set()

    def walk(reg):
        if id(reg) in seen:
            return
        seen.add(id(reg))
        if reg.name == registry_name:
            reg.import_from_location()
            names.update(reg.module_dict.keys())
            names.update(f'{reg.scope}.{k}' for k in reg.module_dict)
        for child in reg.children.values():
            walk(child)

    for r in roots:
        walk(r)
    return names


def explain_exception(e):
    """A one-line explanation for errors caused by bad input, else None (a real bug: keep the traceback)."""
    from vla_mm.compat import CheckpointLoadError
    if isinstance(e, CheckpointLoadError):
        return str(e)
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    m = _NOT_REGISTERED.search(msg)
    if isinstance(e, KeyError) and m:
        name, scope, reg_name = m.group(1), m.group(2), m.group(3)
        candidates = _registered_names(reg_name)
        close = difflib.get_close_matches(name, sorted(candidates), n=4, cutoff=0.75)
        if not close:  # case-insensitive / suffix match (e.g. 'linearvit')
            low = {c.lower(): c for c in candidates}
            close = [low[c] for c in difflib.get_close_matches(name.lower(), list(low), n=4, cutoff=0.75)]
        hint = f'; close matches: {", ".join(close)}' if close else ''
        return f"unknown {reg_name} type '{name}' (registry {scope + '::' if scope else ''}{reg_name}){hint}"
    if isinstance(e, FileNotFoundError):
        return f'file not found: {getattr(e, "filename", None) or msg}'
    return None


def use_cpu_backend(cfg):
    """Distributed runs without a GPU use gloo (NCCL needs CUDA)."""
    import torch
    if cfg.get('launcher', 'none') != 'none' and not torch.cuda.is_available():
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
        # mmengine's init_dist calls torch.cuda.set_device(LOCAL_RANK) unconditionally, which raises on a host
        # without a GPU driver (torch >= 2.x): there is no device to select, so make it a no-op in this process
        torch.cuda.set_device = lambda device: None
        # and MMEngine's default DDP wrapper passes device_ids=[LOCAL_RANK], which DDP refuses for CPU modules
        wrapper = dict(cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel'))
        wrapper.setdefault('device_ids', None)
        if 'find_unused_parameters' in cfg and 'find_unused_parameters' not in wrapper:
            wrapper['find_unused_parameters'] = cfg.find_unused_parameters
        cfg.model_wrapper_cfg = wrapper


def set_work_dir(cfg, config_path, work_dir=None):
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    return cfg


def to_plain(obj):
    if isinstance(obj, (ConfigDict, dict)):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if hasattr(obj, 'item'):
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            return obj.tolist()
    return obj
