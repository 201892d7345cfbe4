"""Triton kernels for the token mixers, each beside its plain PyTorch reference.

Imported as ``vla_mm.ops`` (see ``setup.py``). This package imports only torch, triton and einops.
Dispatch: CUDA tensors run the Triton kernels; CPU tensors, or ``VLA_OPS_REFERENCE=1``, run the reference.
"""
