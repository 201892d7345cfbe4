"""Triton kernels for the token mixers, each beside its plain PyTorch reference.

Imported as ``vla_mm.ops`` (see ``setup.py``). This package imports only torch, triton and einops.
Each public op is a ``torch.library`` custom op ``vla_mm::<name>`` (``torch.compile`` traces through it): CUDA
tensors run the Triton kernels; CPU tensors, float64 inputs or ``VLA_OPS_REFERENCE=1`` run the reference.
Shared plumbing (checks, dispatch, packed sequences, jit helpers, ``kernel_options``): ``ops/common/``; the
contract: ``docs/ops.md``.
"""
