"""Plain PyTorch references of the delta rule (DeltaNet) and the gated delta rule (Gated DeltaNet).

Notation (per batch element and head; the stored state is kept key-major, ``[K, V]``, like
flash-linear-attention's ``h``):

    H_t = a_t (I - b_t k_t k_t^T) H_{t-1} + b_t k_t v_t^T          (a_t = exp(g_t); a_t = 1 without a gate)
    o_t = scale * H_t^T q_t

which is the paper's ``S_t = a_t S_{t-1} (I - b_t k_t k_t^T) + b_t v_t k_t^T`` with ``S_t = H_t^T``.

``delta_rule_recurrent`` is the truth: one step per token, in the dtype of its inputs (pass float64 for tests).
``delta_rule_chunked`` is the same function written the way the Triton kernels compute it (chunks of ``chunk_size``
tokens, the UT / WY form inside a chunk, state passing between chunks); it exists to document and check the
algebra and to run long sequences on the CPU faster than the step-by-step loop.

Both accept ``cu_seqlens`` (packed sequences, ``B == 1``) and ``reverse=True`` (the recurrence runs from the last
token of each sequence to the first, starting from ``initial_state`` at the right end). The references may build
flipped index copies; the Triton kernels do not.
"""
from functools import partial
from typing import Optional, Tuple

import torch

from ..common.varlen import per_sequence, segments, steps


def delta_rule_recurrent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                         g: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                         initial_state: Optional[torch.Tensor] = None, output_final_state: bool = False,
                         cu_seqlens: Optional[torch.Tensor] = None, reverse: bool = False
                         ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Step-by-step recurrence. Shapes: q, k [B, N, H, K]; v [B, N, H, V]; beta, g [B, N, H];
    initial_state [S, H, K, V] with S = B (or the number of sequences with ``cu_seqlens``).

    Computes in the promoted dtype of the inputs (float32 at least) and returns ``o`` in that dtype and the
    final state (or None).
    """
    B, N, H, K = q.shape
    V = v.shape[-1]
    if scale is None:
        scale = K ** -0.5
    dt = torch.promote_types(q.dtype, torch.float32)
    if initial_state is not None:
        dt = torch.promote_types(dt, initial_state.dtype)
    q, k, v, beta = q.to(dt), k.to(dt), v.to(dt), beta.to(dt)
    g = None if g is None else g.to(dt)
    if cu_seqlens is None:
        # all B sequences step together: state [B, H, K, V]
        groups = [(slice(None), 0, N)]
    else:
        groups = [(slice(0, 1), bos, eos) for _, bos, eos in segments(B, N, cu_seqlens)]
    outs, finals = [], []
    for s, (bsl, bos, eos) in enumerate(groups):
        nb = B if cu_seqlens is None else 1
        if initial_state is None:
            h = q.new_zeros(nb, H, K, V)
        else:
            h = (initial_state if cu_seqlens is None else initial_state[s:s + 1]).to(dt)
        o_seg = []
        for t in steps(bos, eos, reverse):
            kt, vt, bt = k[bsl, t], v[bsl, t], beta[bsl, t]              # [b,H,K], [b,H,V], [b,H]
            if g is not None:
                h = h * g[bsl, t].exp()[..., None, None]
            # h <- h + b k (v - h^T k)^T
            vnew = vt - torch.einsum('bhkv,bhk->bhv', h, kt)
            h = h + torch.einsum('bhk,bhv->bhkv', kt, vnew * bt[..., None])
            o_seg.append(torch.einsum('bhkv,bhk->bhv', h, q[bsl, t]) * scale)
        if reverse:
            o_seg = o_seg[::-1]
        if o_seg:
            outs.append(torch.stack(o_seg, 1))
        finals.append(h)
    o = torch.cat(outs, 1) if outs else q.new_zeros(B, N, H, V)
    final = torch.cat(finals, 0) if output_final_state else None
    return o, final


def delta_rule_chunked(q, k, v, beta, g=None, scale=None, initial_state=None, output_final_state=False,
                       cu_seqlens=None, reverse=False, chunk_size: int = 64):
    """Chunked UT-form computation (same signature and result as :func:`delta_rule_recurrent`).

    Within a chunk of C tokens with chunk-local cumulative log gates G (G_r = g_1 + ... + g_r) and state H0 at
    the chunk start:

        A = strict_lower(diag(b) (K K^T) * exp(G_i - G_j)),   T = (I + A)^-1
        W = T diag(b exp(G)) K,   U~ = T diag(b) V,   U = U~ - W H0
        O = scale * (diag(exp(G)) Q H0 + (Q K^T * exp(G_r - G_i), i <= r) U)
        H_C = exp(G_C) H0 + (diag(exp(G_C - G)) K)^T U

    Every decay is the exponential of a difference of cumulative log gates that is <= 0 where it is used, so
    strong decay underflows to 0 instead of overflowing.
    """
    B, N, H, K = q.shape
    if scale is None:
        scale = K ** -0.5
    dt = torch.promote_types(q.dtype, torch.float32)
    if initial_state is not None:
        dt = torch.promote_types(dt, initial_state.dtype)
    ins = [q.to(dt), k.to(dt), v.to(dt), beta.to(dt), None if g is None else g.to(dt)]
    h0 = None if initial_state is None else initial_state.to(dt)
    o, final = per_sequence(partial(_ut_chunks, scale=scale, reverse=reverse, C=chunk_size), ins, h0, B, N,
                            cu_seqlens)
    return o, (final if output_final_state else None)


def _ut_chunks(q, k, v, beta, g, h0, scale, reverse, C):
    """Dense [B, N, H, *] inputs in the compute dtype -> (o [B, N, H, V], final state [B, H, K, V])."""
    B, N, H, K = q.shape
    V = v.shape[-1]
    if reverse:
        q, k, v, beta, g = (x.flip(1) if x is not None else None for x in (q, k, v, beta, g))
    h = q.new_zeros(B, H, K, V) if h0 is None else h0
    outs = []
    for c0 in range(0, N, C):
        qc, kc, vc = (x[:, c0:c0 + C].transpose(1, 2) for x in (q, k, v))      # [B, H, c, D]
        bc = beta[:, c0:c0 + C].transpose(1, 2)                               # [B, H, c]
        c = qc.shape[2]
        G = qc.new_zeros(B, H, c) if g is None else g[:, c0:c0 + C].transpose(1, 2).cumsum(-1)
        diff = G[..., :, None] - G[..., None, :]                              # G_r - G_i
        causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
        strict = causal.tril(-1)
        A = bc[..., None] * (kc @ kc.transpose(-1, -2)) * diff.masked_fill(~strict, float('-inf')).exp()
        eye = torch.eye(c, dtype=q.dtype, device=q.device)
        T = torch.linalg.solve_triangular(eye + A, eye.expand(B, H, c, c), upper=False, unitriangular=True)
        W = T @ (kc * (bc * G.exp())[..., None])
        U = T @ (vc * bc[..., None]) - W @ h
        P = (qc @ kc.transpose(-1, -2)) * diff.masked_fill(~causal, float('-inf')).exp()
        outs.append(scale * ((qc * G.exp()[..., None]) @ h + P @ U))
        Gl = G[..., -1:]
        h = Gl.exp()[..., None] * h + (kc * (Gl - G).exp()[..., None]).transpose(-1, -2) @ U
    o = torch.cat(outs, 2).transpose(1, 2) if outs else q.new_zeros(B, N, H, V)
    return (o.flip(1) if reverse else o), h
