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
from functools import partial

import torch

from ..common.varlen import per_sequence, segments, steps


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
    """Same function as :func:`gla_recurrent_reference`, computed chunk by chunk: the CPU path of the public op.

    Batched over B and H, one Python step per chunk of C tokens (16 with vector gates, 64 otherwise); packed
    sequences run one after another. With G the inclusive cumulative log gates of the chunk and, on the query
    side, Q = G (Q = G - g, exclusive, with the bonus u), for keys j <= i (j < i with u)::

        o_i = scale * [ (q_i * exp(Q_i))^T S0 + sum_j (q_i . (k_j * exp(Q_i - G_j))) v_j + (q_i . (u * k_i)) v_i ]
        S_C = exp(G_C) S0 + sum_j (k_j * exp(G_C - G_j)) v_j^T

    (value gates act the same way along V). Vector gates whose cumulative log gates stay within +-40 in the
    chunk (+-300 in float64) factor the pair decay as exp(Q_i) * exp(-G_j) into the two matmul operands; a
    chunk with stronger gates builds the pair decays as a [C, C, D] tensor instead, each exponent a difference
    masked to -inf outside the causal pairs, so strong gates underflow instead of overflowing.
    """
    B, N, H, K = q.shape
    dt = _compute_dtype(q, k, v, gk, gv, u, initial_state)
    scale = K ** -0.5 if scale is None else scale
    ins = [x.to(dt) if x is not None else None for x in (q, k, v, gk, gv)]
    uf = u.to(dt) if u is not None else None
    h0 = initial_state.to(dt) if initial_state is not None else None
    o, final = per_sequence(partial(_chunks, u=uf, scale=scale, reverse=reverse), ins, h0, B, N, cu_seqlens)
    return o.to(q.dtype), (final if output_final_state else None)


def _pair_decay(Qd, G, mask):
    """exp(Qd_i - G_j) on the pairs of ``mask`` [c, c], 0 elsewhere: [B, H, c(, D)] -> [B, H, c, c(, D)]."""
    if Qd.dim() == 3:
        diff, m = Qd[..., :, None] - G[..., None, :], mask
    else:
        diff, m = Qd[..., :, None, :] - G[..., None, :, :], mask[:, :, None]
    return diff.masked_fill(~m, float('-inf')).exp()


def _gate(g, u):
    """(inclusive cumsum G, query-side exponent Q, last row G_C) of one chunk's log gates [B, H, c(, D)]."""
    G = g.cumsum(2)
    return G, (G - g if u is not None else G), G[:, :, -1:]


def _factorable(G):
    """Can exp(Q_i - G_j) be split into exp(Q_i) exp(-G_j) without overflow or underflow in G's dtype?"""
    return bool(G.abs().amax() < (300.0 if G.dtype == torch.float64 else 40.0))


def _chunks(q, k, v, gk, gv, h0, u, scale, reverse):
    """Dense [B, N, H, *] inputs in the compute dtype -> (o [B, N, H, V], final state [B, H, K, V])."""
    B, N, H, K = q.shape
    V = v.shape[-1]
    if reverse:
        q, k, v, gk, gv = (x.flip(1) if x is not None else None for x in (q, k, v, gk, gv))
    S = h0 if h0 is not None else q.new_zeros(B, H, K, V)
    vector = (gk is not None and gk.dim() == 4) or gv is not None
    C = 16 if vector else 64
    outs = []
    for c0 in range(0, N, C):
        qc, kc, vc = (x[:, c0:c0 + C].transpose(1, 2) for x in (q, k, v))            # [B, H, c, D]
        c = qc.shape[2]
        mask = torch.ones(c, c, dtype=torch.bool, device=q.device).tril(-1 if u is not None else 0)
        qs, kl, vl, S0 = qc, kc, vc, S                                                # decayed operands
        if gk is None:
            scores = (qc @ kc.transpose(-1, -2)).masked_fill(~mask, 0.0)
        elif gk.dim() == 3:                                                           # one gate per head
            G, Qd, GC = _gate(gk[:, c0:c0 + C].transpose(1, 2), u)
            scores = (qc @ kc.transpose(-1, -2)) * _pair_decay(Qd, G, mask)
            qs, kl = qc * Qd.exp()[..., None], kc * (GC - G).exp()[..., None]
            S = S * GC.exp()[..., None]
        else:                                                                         # per key dimension
            G, Qd, GC = _gate(gk[:, c0:c0 + C].transpose(1, 2), u)
            qs, kl = qc * Qd.exp(), kc * (GC - G).exp()
            if _factorable(G):
                scores = (qs @ (kc * (-G).exp()).transpose(-1, -2)).masked_fill(~mask, 0.0)
            else:
                scores = torch.einsum('bhik,bhjk,bhijk->bhij', qc, kc, _pair_decay(Qd, G, mask))
            S = S * GC.transpose(-1, -2).exp()
        if gv is None:
            o = qs @ S0 + scores @ vc
        else:                                                                         # per value dimension
            Gv, Qv, GvC = _gate(gv[:, c0:c0 + C].transpose(1, 2), u)
            if _factorable(Gv):
                o = (qs @ S0 + scores @ (vc * (-Gv).exp())) * Qv.exp()
            else:
                o = (qs @ S0) * Qv.exp() + torch.einsum('bhij,bhjv,bhijv->bhiv', scores, vc,
                                                        _pair_decay(Qv, Gv, mask))
            vl = vc * (GvC - Gv).exp()
            S = S * GvC.exp()
        if u is not None:
            o = o + (qc * u[:, None, :] * kc).sum(-1, keepdim=True) * vc
        S = S + kl.transpose(-1, -2) @ vl
        outs.append(o * scale)
    o = torch.cat(outs, 2).transpose(1, 2) if outs else q.new_zeros(B, N, H, V)
    if reverse:
        o = o.flip(1)
    return o, S
