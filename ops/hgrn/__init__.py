"""HGRN's elementwise gated recurrence as a chunked parallel scan.

Public op: :func:`hgrn` (the custom op ``vla_mm::hgrn``). Triton entry point (tests, interpreter):
:func:`hgrn_triton`. Reference (step by step, the truth): :func:`hgrn_recurrent_reference`.
HGRN has no query / key product, so no ``scale``; the rest of the keyword contract is every family's.
"""
from typing import Optional, Tuple

import torch

from ..common import (check_cu_seqlens, check_dtype, check_initial_state, check_same_device, kernel_options,
                      register_op, use_triton)
from .reference import hgrn_recurrent_reference
from .scan import hgrn_bwd, hgrn_fwd

__all__ = ['hgrn', 'hgrn_triton', 'hgrn_recurrent_reference']

CHUNK = 64


def _check(x, g, initial_state, cu_seqlens):
    for name, t in (('x', x), ('g', g), ('initial_state', initial_state)):
        if t is not None:
            check_dtype(name, t, allow_float64=True)
    check_same_device(x=x, g=g, initial_state=initial_state, cu_seqlens=cu_seqlens)
    if x.dim() != 3 or min(x.shape) < 1:
        raise ValueError(f'x must be [B, N, D] with B, N, D >= 1, got shape {tuple(x.shape)}')
    if g.shape != x.shape:
        raise ValueError(f'g must have the shape of x {tuple(x.shape)}, got {tuple(g.shape)}')
    B, N, D = x.shape
    S = check_cu_seqlens(cu_seqlens, B, N)
    check_initial_state(initial_state, (S, D), '[S, D]', allow_float64=True)


def _no_state(x):
    return torch.empty(0, dtype=torch.float32, device=x.device)


def _reference(x, g, initial_state, cu_seqlens, output_final_state, reverse, gated_input, chunk_size):
    o, ht = hgrn_recurrent_reference(x, g, initial_state=initial_state, output_final_state=output_final_state,
                                     cu_seqlens=cu_seqlens, reverse=reverse, gated_input=gated_input)
    return o, (ht if ht is not None else _no_state(x))


def _copies(x, g, initial_state):
    """Which inputs the Triton forward copies to contiguous memory (and keeps, so the backward copies nothing)."""
    return [n for n, t in (('x', x), ('g', g), ('h0', initial_state)) if t is not None and not t.is_contiguous()]


def _triton(x, g, initial_state, cu_seqlens, output_final_state, reverse, gated_input, chunk_size):
    dense = dict(zip(('x', 'g', 'h0'), (x, g, initial_state)))
    kept = [dense[n].contiguous() for n in _copies(x, g, initial_state)]
    dense.update(zip(_copies(x, g, initial_state), kept))
    o, ht = hgrn_fwd(dense['x'], dense['g'], dense['h0'], output_final_state, cu_seqlens, reverse, gated_input,
                     chunk_size)
    return (o, ht if ht is not None else _no_state(x)), kept


def _triton_backward(grads, outputs, saved, x, g, initial_state, cu_seqlens, output_final_state, reverse,
                     gated_input, chunk_size):
    dense = dict(zip(('x', 'g', 'h0'), (x, g, initial_state)))
    dense.update(zip(_copies(x, g, initial_state), saved))
    do, dht = grads
    o = outputs[0]
    do = torch.zeros_like(o) if do is None else do
    dht = dht if output_final_state else None
    return hgrn_bwd(dense['x'], dense['g'], dense['h0'], o, do, dht, cu_seqlens, reverse, gated_input, chunk_size)


def _fake(x, g, initial_state, cu_seqlens, output_final_state, reverse, gated_input, chunk_size):
    B, N, D = x.shape
    S = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    f64 = any(t is not None and t.dtype == torch.float64 for t in (x, g, initial_state))
    ht = x.new_empty((S, D), dtype=torch.float64 if f64 else torch.float32) if output_final_state else _no_state(x)
    outs = [x.new_empty(x.shape), ht]
    if use_triton(x, g, initial_state, cu_seqlens):
        dense = dict(zip(('x', 'g', 'h0'), (x, g, initial_state)))
        outs += [dense[n].new_empty(dense[n].shape) for n in _copies(x, g, initial_state)]
    return outs


_hgrn_op = register_op(
    'hgrn', '(Tensor x, Tensor g, Tensor? initial_state, Tensor? cu_seqlens, bool output_final_state, '
            'bool reverse, bool gated_input, int chunk_size)',
    outputs=2, grads=('x', 'g', 'initial_state'), reference=_reference, triton=_triton,
    triton_backward=_triton_backward, fake=_fake)


def hgrn(x: torch.Tensor, g: torch.Tensor, *, initial_state: Optional[torch.Tensor] = None,
         output_final_state: bool = False, cu_seqlens: Optional[torch.Tensor] = None, reverse: bool = False,
         gated_input: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """HGRN recurrence ``h_t = exp(g_t) * h_{t-1} + (1 - exp(g_t)) * x_t``, output ``o_t = h_t``.

    Args:
        x: inputs ``[B, N, D]`` (fp32, fp16 or bf16; float64 takes the reference; D = heads * head_dim,
            channels are independent).
        g: log forget gates ``[B, N, D]`` (<= 0; e.g. ``logsigmoid`` of a projection, with HGRN's lower bound
            applied by the caller). Any float dtype; the scan runs in fp32.
        initial_state: ``[S, D]`` (S = B, or the number of packed sequences).
        output_final_state: also return the fp32 final state ``[S, D]``.
        cu_seqlens: ``[S + 1]`` int boundaries of packed sequences (then B must be 1).
        reverse: run right to left without flipping any tensor.
        gated_input: ``False`` drops the ``(1 - exp(g_t))`` factor: ``h_t = exp(g_t) h_{t-1} + x_t``
            (flash-linear-attention's ``hgrn`` form, where the layer gates the input itself).

    Returns:
        ``(o [B, N, D] in x's dtype, final_state or None)``.
    """
    _check(x, g, initial_state, cu_seqlens)
    o, ht = _hgrn_op(x, g, initial_state, cu_seqlens, bool(output_final_state), bool(reverse), bool(gated_input),
                     CHUNK)
    return o, (ht if output_final_state else None)


def hgrn_triton(x, g, initial_state=None, output_final_state=False, cu_seqlens=None, reverse=False,
                gated_input=True, chunk_size=CHUNK):
    """The Triton kernels whatever the device (CPU tensors need ``TRITON_INTERPRET=1``); ``chunk_size`` (a power
    of two) lets tests cross many chunk boundaries at small N."""
    _check(x, g, initial_state, cu_seqlens)
    with kernel_options(backend='triton'):
        o, ht = _hgrn_op(x, g, initial_state, cu_seqlens, bool(output_final_state), bool(reverse),
                         bool(gated_input), int(chunk_size))
    return o, (ht if output_final_state else None)
