"""Step-by-step GSA / ABC recurrence (bounded-memory slots): the ground truth.

Per head, M slots; key memory ``Hk [K, M]`` and value memory ``Hv [M, V]`` with one log forget gate per
slot ``g_t [M]`` (<= 0) and slot write weights ``s_t [M]``::

    Hk_t = Hk_{t-1} diag(exp(g_t)) + k_t s_t^T          scores_t = scale * Hk_t^T q_t        [M]
    Hv_t = diag(exp(g_t)) Hv_{t-1} + s_t v_t^T          p_t = softmax(scores_t)             [M]
                                                        o_t = Hv_t^T p_t                     [V]

(the form of Gated Slot Attention, Zhang et al. 2024). Computes in float64 if any input is float64.
"""
import torch

from ..common.varlen import segments, steps


def gsa_recurrent_reference(q, k, v, s, g, scale=None, initial_state=None, output_final_state=False,
                            cu_seqlens=None, reverse=False):
    B, N, H, K = q.shape
    V, M = v.shape[-1], s.shape[-1]
    dt = torch.float64 if any(t is not None and t.dtype == torch.float64 for t in (q, k, v, s, g)) \
        else torch.float32
    scale = K ** -0.5 if scale is None else scale
    qf, kf, vf, sf, gf = (t.to(dt) for t in (q, k, v, s, g))
    segs = segments(B, N, cu_seqlens)
    o = torch.zeros(B, N, H, V, dtype=dt, device=q.device)
    fk, fv = [], []
    for i, (b, bos, eos) in enumerate(segs):
        if initial_state is not None:
            hk, hv = initial_state[0][i].to(dt), initial_state[1][i].to(dt)
        else:
            hk = torch.zeros(H, K, M, dtype=dt, device=q.device)
            hv = torch.zeros(H, M, V, dtype=dt, device=q.device)
        for t in steps(bos, eos, reverse):
            a = gf[b, t].exp()                                               # [H, M]
            hk = hk * a[:, None, :] + kf[b, t, :, :, None] * sf[b, t, :, None, :]
            hv = hv * a[:, :, None] + sf[b, t, :, :, None] * vf[b, t, :, None, :]
            p = torch.einsum('hk,hkm->hm', qf[b, t] * scale, hk).softmax(-1)
            o[b, t] = torch.einsum('hm,hmv->hv', p, hv)
        fk.append(hk)
        fv.append(hv)
    final = (torch.stack(fk), torch.stack(fv)) if output_final_state else None
    return o.to(q.dtype), final
