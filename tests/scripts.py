"""Load a tool script (``tools/...py``, not a package) as a module under a private name."""
import importlib.util
import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_script(path, name):
    """The script at ``path`` (absolute, or relative to the repository root) as module ``name``; a private name
    keeps common words ('ops', 'models') from shadowing real modules."""
    spec = importlib.util.spec_from_file_location(name, path if osp.isabs(path) else osp.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
