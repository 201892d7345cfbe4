"""Triton kernel of the sum over rows (a linear layer's bias gradient: its output gradient summed over tokens).

x is seen as ``[M, N]`` rows (row stride ``sx``, unit column stride). Each program owns ``BN`` columns and a
contiguous range of rows, adds ``[BM, BN]`` tiles elementwise in fp32 registers and reduces over rows once after
its loop (the norm backward's layout, docs/ops.md), writing one fp32 partial row; the host sums the partial rows
(no atomics: repeatable bits). The programs fill ``progs_per_sm`` per multiprocessor.
"""
from types import MappingProxyType

import torch
import triton
import triton.language as tl

from ..common.launch import jit
from ..common.options import alloc, cdiv, current_options, declare_launch, next_power_of_2, num_sms, rows_of

# launch settings (kernel_options(launch={'sum_rows': {...}}) overrides them): tile rows and columns, warps,
# programs per multiprocessor (enough of them to keep each SM's memory pipe full)
LAUNCH_DEFAULTS = MappingProxyType(dict(sum_rows=MappingProxyType(dict(block_m=32, block_n=128, num_warps=4,
                                                                        progs_per_sm=8))))
declare_launch(LAUNCH_DEFAULTS['sum_rows'], 'sum_rows')


@jit
def _sum_rows_kernel(x, part, M, N, sx, rows_per_prog, BM: tl.constexpr, BN: tl.constexpr):
    i_n, i_p = tl.program_id(0), tl.program_id(1)
    c = i_n * BN + tl.arange(0, BN)
    mc = c < N
    start = i_p * rows_per_prog
    end = tl.minimum(start + rows_per_prog, M)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for r0 in range(start, end, BM):
        r = r0 + tl.arange(0, BM)
        acc += tl.load(x + r.to(tl.int64)[:, None] * sx + c[None, :], mask=(r < end)[:, None] & mc[None, :],
                       other=0.).to(tl.float32)
    tl.store(part + i_p.to(tl.int64) * N + c, tl.sum(acc, axis=0), mask=mc)


def sum_rows_fwd(x):
    """``x [..., N]`` -> fp32 ``[N]``."""
    N = x.shape[-1]
    x2 = rows_of(x, N)
    M = x2.shape[0]
    if not M:
        return torch.zeros(N, dtype=torch.float32, device=x.device)
    cfg = current_options().settings('sum_rows', LAUNCH_DEFAULTS['sum_rows'])
    BN = min(cfg['block_n'], max(16, next_power_of_2(N)))
    BM = cfg['block_m']
    col_blocks = cdiv(N, BN)
    progs = min(cdiv(M, BM), cdiv(cfg['progs_per_sm'] * num_sms(x.device), col_blocks))
    rows_per_prog = cdiv(cdiv(M, progs), BM) * BM
    progs = cdiv(M, rows_per_prog)
    part = alloc((progs, N), torch.float32, x.device)
    _sum_rows_kernel[(col_blocks, progs)](x2, part, M, N, x2.stride(0), rows_per_prog, BM=BM, BN=BN,
                                          num_warps=cfg['num_warps'])
    return part.sum(0)
