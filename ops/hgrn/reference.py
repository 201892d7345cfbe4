"""Step-by-step HGRN recurrence: the ground truth for the scan kernel.

    h_t = exp(g_t) * h_{t-1} + (1 - exp(g_t)) * x_t      (gated_input=True, HGRN as published)
    h_t = exp(g_t) * h_{t-1} + x_t                       (gated_input=False, flash-linear-attention's form)

x, g: [B, N, D] (g = log forget gate, <= 0); output o_t = h_t. Computes in float64 if any input is float64,
else float32; returns o in x's dtype and the final state [S, D] in the compute dtype.
"""
import torch

from ..common.varlen import segments, steps


def hgrn_recurrent_reference(x, g, initial_state=None, output_final_state=False, cu_seqlens=None, reverse=False,
                             gated_input=True):
    B, N, D = x.shape
    dt = torch.float64 if any(t is not None and t.dtype == torch.float64 for t in (x, g, initial_state)) \
        else torch.float32
    xf, gf = x.to(dt), g.to(dt)
    segs = segments(B, N, cu_seqlens)
    o = torch.zeros(B, N, D, dtype=dt, device=x.device)
    finals = []
    for i, (b, bos, eos) in enumerate(segs):
        h = initial_state[i].to(dt) if initial_state is not None else torch.zeros(D, dtype=dt, device=x.device)
        for t in steps(bos, eos, reverse):
            a = gf[b, t].exp()
            inp = -torch.expm1(gf[b, t]) * xf[b, t] if gated_input else xf[b, t]
            h = a * h + inp
            o[b, t] = h
        finals.append(h)
    return o.to(x.dtype), (torch.stack(finals) if output_final_state else None)
