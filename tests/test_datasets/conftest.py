"""Small shapes data sets generated once per test session (CPU, a few seconds)."""
import pytest

from vla_mm.datasets import shapes as S

# Small but real: every format on disk, every class present.
CLS_PARAMS = dict(image_size=32, num_train=36, num_val=12, seed=0)
SCENE_PARAMS = dict(image_size=64, num_train=10, num_val=4, seed=0)


@pytest.fixture(scope='session')
def shapes_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp('shapes')
    roots = {}
    for task, params in (('cls', CLS_PARAMS), ('seg', SCENE_PARAMS), ('det', SCENE_PARAMS)):
        roots[task] = str(base / task)
        assert S.generate(task, roots[task], params, logger=None) == 'generated'
    return roots
