"""Test session set-up.

Without a GPU the Triton kernels are tested through Triton's interpreter: ``TRITON_INTERPRET=1`` must be set
before ``triton`` is imported. Model tests are unaffected: on CPU tensors the public ops dispatch to the
reference; kernel tests call each family's ``*_triton`` entry point directly.
Set ``VLA_TEST_GPU=1`` to run the kernel tests compiled on a real GPU instead.
"""
import os

if os.environ.get('VLA_TEST_GPU', '0') in ('', '0'):
    os.environ.setdefault('TRITON_INTERPRET', '1')

import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_default_scope():
    """A test that loads a config sets MMEngine's default scope (``init_default_scope``), which then redirects
    every later ``MODELS.build`` of a bare type name to that scope's registry: drop the scopes a test created."""
    reg = sys.modules.get('mmengine.registry')
    before = set(reg.DefaultScope._instance_dict) if reg is not None else None
    yield
    reg = sys.modules.get('mmengine.registry')
    if reg is not None:
        for name in [n for n in reg.DefaultScope._instance_dict if before is None or n not in before]:
            del reg.DefaultScope._instance_dict[name]
