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
    if cu_seqlens is None:                      # dense: all B sequences step together
        groups = [(slice(None), 0, N, initial_state)]
    else:
        groups = [(slice(b, b + 1), bos, eos, None if initial_state is None else initial_state[i:i + 1])
                  for i, (b, bos, eos) in enumerate(segments(B, N, cu_seqlens))]
    outs, finals = [], []
    for bsl, bos, eos, h0 in groups:
        nb = B if cu_seqlens is None else 1
        h = h0.to(dt) if h0 is not None else torch.zeros(nb, D, dtype=dt, device=x.device)
        o_seg = []
        for t in steps(bos, eos, reverse):
            gt = gf[bsl, t]
            h = gt.exp() * h + (-torch.expm1(gt) * xf[bsl, t] if gated_input else xf[bsl, t])
            o_seg.append(h)
        if reverse:
            o_seg = o_seg[::-1]
        outs.append(torch.stack(o_seg, 1) if o_seg else xf.new_zeros(nb, 0, D))
        finals.append(h)
    o = torch.cat(outs, 1) if cu_seqlens is not None else outs[0]
    return o.to(x.dtype), (torch.cat(finals) if output_final_state else None)
