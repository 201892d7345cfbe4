"""The sum over rows in plain PyTorch: the ground truth for the kernel, and the CPU path."""
import torch


def sum_rows_reference(x):
    """``x [..., N]`` -> the sum over every leading dim, ``[N]``, in float32 (float64 for float64 x)."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.reshape(-1, x.shape[-1]).to(dt).sum(0)
