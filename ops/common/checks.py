"""Argument checks of the public ops (torch only): a ``ValueError`` naming the argument, before any launch.

Under ``torch.compile`` the checks see fake tensors: shapes, dtypes and devices are checked while tracing; the
values of ``cu_seqlens`` (a host read) are checked only in eager calls.
"""
import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_dtype(name, t, allow_float64=False):
    """``t`` is a float32 / float16 / bfloat16 tensor (float64 too with ``allow_float64``: the reference path)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    if t.dtype in SUPPORTED_DTYPES or (allow_float64 and t.dtype == torch.float64):
        return
    extra = ' (or float64 for the reference)' if allow_float64 else ''
    raise ValueError(f'{name} must be float32, float16 or bfloat16{extra}, got {t.dtype}')


def check_same_device(**tensors):
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        raise ValueError(f'all inputs must be on one device, got {devs}')


def check_shape(name, t, shape, layout):
    """``t`` is a tensor of exactly ``shape`` (``layout`` names the dims in the message, e.g. '[B, N, H]')."""
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f'{name} must be {layout} = {tuple(shape)}, got {got}')


def check_qkv(q, k, v, max_head_dim_k, max_head_dim_v=None):
    """Shapes of the [B, N, H, K] / [B, N, H, V] layout every op takes; returns (B, N, H, K)."""
    for name, t in (('q', q), ('k', k), ('v', v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
    if q.dim() != 4:
        raise ValueError(f'q must be [B, N, H, K], got shape {tuple(q.shape)}')
    B, N, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f'k must have the shape of q {tuple(q.shape)}, got {tuple(k.shape)}')
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f'v must be [B, N, H, V] with B, N, H = {B, N, H}, got {tuple(v.shape)}')
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f'q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}')
    if min(B, N, H, K) < 1 or v.shape[-1] < 1:
        raise ValueError(f'q and v must have B, N, H, K, V >= 1, got {tuple(q.shape)}, {tuple(v.shape)}')
    if K > max_head_dim_k:
        raise ValueError(f'q / k head dim K must be <= {max_head_dim_k}, got {K}')
    if max_head_dim_v is not None and v.shape[-1] > max_head_dim_v:
        raise ValueError(f'v head dim V must be <= {max_head_dim_v}, got {v.shape[-1]}')
    return B, N, H, K


def check_cu_seqlens(cu_seqlens, B, N):
    """``cu_seqlens``: None, or int32/int64 ``[S + 1]`` offsets rising from 0 to N of packed sequences (B == 1).
    Returns the number of sequences S (B without ``cu_seqlens``)."""
    if cu_seqlens is None:
        return B
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
            or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError('cu_seqlens must be a 1-D int32/int64 tensor [S + 1] of sequence boundaries, got '
                         f'{getattr(cu_seqlens, "dtype", type(cu_seqlens).__name__)} '
                         f'{tuple(getattr(cu_seqlens, "shape", ()))}')
    if B != 1:
        raise ValueError(f'cu_seqlens needs packed inputs with B == 1, got B = {B}')
    if capturing(cu_seqlens):
        raise ValueError('cu_seqlens: packed sequences are planned from their offsets on the host, which a CUDA '
                         "graph cannot capture (torch.compile mode='reduce-overhead'); compile packed calls with "
                         "mode='max-autotune-no-cudagraphs'")
    if not torch.compiler.is_compiling():
        cu = cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != N or any(b < a for a, b in zip(cu[:-1], cu[1:])):
            shown = cu if len(cu) <= 8 else cu[:4] + ['...'] + cu[-2:]
            raise ValueError(f'cu_seqlens must rise from 0 to N = {N}, got {shown}')
    return cu_seqlens.numel() - 1


def capturing(t) -> bool:
    """Is a CUDA graph being captured on ``t``'s stream (no host reads of device values allowed)?"""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def check_initial_state(t, shape, layout, name='initial_state', allow_float64=False):
    """An optional state tensor of exactly ``shape`` in a float dtype."""
    if t is None:
        return
    check_shape(name, t, shape, layout)
    check_dtype(name, t, allow_float64)
