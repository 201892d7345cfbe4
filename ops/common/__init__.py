"""Plumbing shared by every kernel family (torch and triton only).

* ``checks``: argument checks (dtype, device, ``[B, N, H, K]`` layout, ``cu_seqlens``, state shapes);
* ``dispatch``: Triton-or-reference dispatch and the ``torch.library`` custom-op registration (``register_op``);
* ``varlen``: per-sequence / per-chunk tables of packed sequences (``PackedSeqs``, ``ChunkTable``);
* ``jit``: shared ``@triton.jit`` helpers (row mapping, sequence / chunk bounds, tiles);
* ``options``: launch settings (``kernel_options`` context manager over a frozen ``KernelOptions``).

The contract every op follows is described in ``docs/ops.md``.
"""
from .checks import (SUPPORTED_DTYPES, check_cu_seqlens, check_dtype, check_initial_state, check_qkv,
                     check_same_device, check_shape)
from .dispatch import force_reference, recompute_grads, register_op, use_triton
from .options import (KernelOptions, alloc, cdiv, current_options, dummy, kernel_options, next_power_of_2,
                      num_sms)
from .varlen import ChunkTable, PackedSeqs, segments, seq_positions, steps

__all__ = ['SUPPORTED_DTYPES', 'check_cu_seqlens', 'check_dtype', 'check_initial_state', 'check_qkv',
           'check_same_device', 'check_shape', 'force_reference', 'recompute_grads', 'register_op', 'use_triton',
           'KernelOptions', 'alloc', 'cdiv', 'current_options', 'dummy', 'kernel_options', 'next_power_of_2', 'num_sms', 'ChunkTable',
           'PackedSeqs', 'segments', 'seq_positions', 'steps']
