"""Step-by-step recurrence of the gated linear attention core: the ground truth for the chunked kernels.

Plain PyTorch, one time step at a time. Computes in float64 when any input is float64, else in float32,
and returns outputs in ``q``'s dtype (final state in the compute dtype).

State per head ``S`` of shape ``[K, V]``; with ``gk`` (log key gates) and ``gv`` (log value gates)::

    S_t = diag(exp(gk_t)) @ S_{t-1} @ diag(exp(gv_t)) + k_t v_t^T
    o_t = scale * S_t^T q_t                                   (no bonus)
    o_t = scale * (S_{t-1} + diag(u) k_t v_t^T)^T q_t         (RWKV6 bonus ``u``: current token through u)

``gk`` is ``[B, N, H, K]`` (per key dimension) or ``[B, N, H]`` (one gate per head, broadcast over K);
``gv`` is ``[B, N, H, V]``. ``reverse=True`` runs t = N-1 ... 0 (the state flows right to left).
"""
import torch

from ..common.varlen import segments, steps


def _compute_dtype(*ts):
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def gla_recurrent_reference(q, k, v, gk=None, gv=None, u=None, scale=None, initial_state=None,
                            output_final_state=False, cu_seqlens=None, reverse=False):
    B, N, H, K = q.shape
    V = v.shape[-1]
    dt = _compute_dtype(q, k, v, gk, gv, u, initial_state)
    scale = K ** -0.5 if scale is None else scale
    qf, kf, vf = (x.to(dt) for x in (q, k, v))
    if gk is not None:
        gkf = gk.to(dt)
        if gkf.dim() == 3:
            gkf = gkf.unsqueeze(-1).expand(B, N, H, K)
    if gv is not None:
        gvf = gv.to(dt)
    uf = u.to(dt) if u is not None else None
    segs = segments(B, N, cu_seqlens)
    o = torch.zeros(B, N, H, V, dtype=dt, device=q.device)
    finals = []
    for i, (b, bos, eos) in enumerate(segs):
        if initial_state is not None:
            S = initial_state[i].to(dt).clone()
        else:
            S = torch.zeros(H, K, V, dtype=dt, device=q.device)
        for t in steps(bos, eos, reverse):
            kv = kf[b, t, :, :, None] * vf[b, t, :, None, :]
            if uf is not None:
                o[b, t] = torch.einsum('hk,hkv->hv', qf[b, t] * scale, S + uf[:, :, None] * kv)
            if gk is not None:
                S = S * gkf[b, t].exp()[:, :, None]
            if gv is not None:
                S = S * gvf[b, t].exp()[:, None, :]
            S = S + kv
            if uf is None:
                o[b, t] = torch.einsum('hk,hkv->hv', qf[b, t] * scale, S)
        finals.append(S)
    final = torch.stack(finals) if output_final_state else None
    return o.to(q.dtype), final


def gla_chunk_reference(q, k, v, gk=None, gv=None, u=None, scale=None, initial_state=None,
                        output_final_state=False, cu_seqlens=None, reverse=False):
    """Same function as :func:`gla_recurrent_reference`; used as the CPU path of the public op.

    It is the step-by-step recurrence (differentiable through autograd); kept as a separate name so a faster
    pure-PyTorch form can replace it without touching the tests' ground truth.
    """
    return gla_recurrent_reference(q, k, v, gk=gk, gv=gv, u=u, scale=scale, initial_state=initial_state,
                                   output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                   reverse=reverse)
