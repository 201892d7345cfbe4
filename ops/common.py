"""Shared pieces of the kernel families: backend dispatch and argument checks (torch only)."""
import os

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def force_reference() -> bool:
    """``VLA_OPS_REFERENCE=1`` forces the plain PyTorch reference everywhere."""
    return os.environ.get('VLA_OPS_REFERENCE', '0').lower() not in ('', '0', 'false', 'no')


def use_triton(*tensors) -> bool:
    """Dispatch rule of every public op: CUDA tensors -> Triton, CPU tensors (or the override) -> reference.

    Tests run the Triton kernels on CPU tensors through ``TRITON_INTERPRET=1`` by calling a family's
    ``*_triton`` entry point directly, so this rule never sends a model's CPU tensors through the interpreter.
    """
    if force_reference():
        return False
    return all(t.is_cuda for t in tensors if t is not None)


def check_dtype(name, t):
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f'{name} must be float32, float16 or bfloat16, got {t.dtype}')


def check_same_device(**tensors):
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        raise ValueError(f'all inputs must be on one device, got {devs}')


def check_qkv(q, k, v, max_head_dim_k):
    """Shapes of the [B, N, H, K] / [B, N, H, V] layout every recurrent op takes; returns (B, N, H, K)."""
    if q.dim() != 4:
        raise ValueError(f'q must be [B, N, H, K], got shape {tuple(q.shape)}')
    B, N, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f'k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}')
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f'v must be [B, N, H, V] with B, N, H = {B, N, H}, got {tuple(v.shape)}')
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f'q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}')
    if K > max_head_dim_k:
        raise ValueError(f'q / k head dim K must be <= {max_head_dim_k}, got {K}')
    return B, N, H, K
