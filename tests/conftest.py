"""Test session set-up.

Without a GPU the Triton kernels are tested through Triton's interpreter: ``TRITON_INTERPRET=1`` must be set
before ``triton`` is imported. Model tests are unaffected: on CPU tensors the public ops dispatch to the
reference; kernel tests call each family's ``*_triton`` entry point directly.
Set ``VLA_TEST_GPU=1`` to run the kernel tests compiled on a real GPU instead.
"""
import os

if os.environ.get('VLA_TEST_GPU', '0') in ('', '0'):
    os.environ.setdefault('TRITON_INTERPRET', '1')
