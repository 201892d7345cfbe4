"""Step-by-step HGRN recurrence: the ground truth for the scan kernel.

    h_t = exp(g_t) * h_{t-1} + (1 - exp(g_t)) * x_t      (gated_input=True, HGRN as published)
    h_t = exp(g_t) * h_{t-1} + x_t                       (gated_input=False, flash-linear-attention's form)

x, g: [B, N, D] (g = log forget gate, <= 0); output o_t = h_t. Computes in float64 if any input is float64,
else float32; returns o in x's dtype and the final state [S, D] in the compute dtype.
"""
from functools import partial

import torch

from ..common.varlen import per_sequence, steps


def hgrn_recurrent_reference(x, g, initial_state=None, output_final_state=False, cu_seqlens=None, reverse=False,
                             gated_input=True):
    B, N, D = x.shape
    dt = torch.float64 if any(t is not None and t.dtype == torch.float64 for t in (x, g, initial_state)) \
        else torch.float32
    xf, gf = x.to(dt), g.to(dt)
    h0 = initial_state.to(dt) if initial_state is not None else None
    o, final = per_sequence(partial(_scan, reverse=reverse, gated_input=gated_input), (xf, gf), h0, B, N,
                            cu_seqlens)
    return o.to(x.dtype), (final if output_final_state else None)


def _scan(x, g, h0, reverse, gated_input):
    """Dense [B, n, D] inputs in the compute dtype, all B sequences stepping together -> (o, final [B, D])."""
    B, n, D = x.shape
    h = h0 if h0 is not None else x.new_zeros(B, D)
    outs = []
    for t in steps(0, n, reverse):
        h = g[:, t].exp() * h + (-torch.expm1(g[:, t]) * x[:, t] if gated_input else x[:, t])
        outs.append(h)
    if reverse:
        outs = outs[::-1]
    return (torch.stack(outs, 1) if outs else x.new_zeros(B, 0, D)), h
