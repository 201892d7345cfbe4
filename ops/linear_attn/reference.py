"""Plain PyTorch reference of non-causal (bidirectional) linear attention: the ground truth of the tests.

Per batch element (or packed sequence) and head, with a feature map phi applied to each token's head vector:

    S = sum_j phi(k_j) v_j^T          [K, V]
    z = sum_j phi(k_j)                [K]
    normalize=True:   o_i = scale * phi(q_i)^T S / (phi(q_i)^T z + eps')
    normalize=False:  o_i = scale * phi(q_i)^T S

* ``scale``: ``None`` means 1 for the normalized op and ``1/n`` for the unnormalized one, where ``n`` is the
  number of valid tokens of the sequence (padding and packing respected).
* ``norm='standard'``: eps' = eps.  ``norm='linfusion'`` (LinFusion, Liu et al. 2024; also MLLA's code): the
  numerator and the normalizer are means instead of sums, o_i = (phi(q_i)^T S / n) / (phi(q_i)^T z / n + eps),
  i.e. eps' = n * eps: the eps term keeps the same weight at every resolution.
* ``rope=(cos, sin)`` (MLLA): phi(q), phi(k) are rotated for the numerator only, the normalizer uses the
  un-rotated features. Rotation acts on interleaved pairs (x[2i], x[2i+1]) of the head dim, angle table
  entry i:  (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos).  ``cos``/``sin`` have shape [N, K/2],
  [N, H, K/2] or [B, N, H, K/2] (N is the packed length with ``cu_seqlens``); they receive no gradient.
* Feature maps: ``identity``; ``elu1`` = elu(x) + 1; ``relu``; ``focused`` (FLatten, Han et al. 2023):
  r = relu(x) + 1e-6, phi(x) = ||r|| * r**p / ||r**p|| (norms over the head dim K of each head), which keeps the
  norm of r and sharpens its direction. (FLatten's code takes the norms over all heads together and divides by a
  learnable softplus scale first; a mixer that wants exactly that applies the map itself and passes
  ``feature_map='identity'``.)
* ``key_padding_mask`` [B, N] (True = valid): invalid tokens contribute nothing and their outputs are 0.
* ``cu_seqlens`` [S+1] with B == 1: tokens cu[s]:cu[s+1] form sequence s, each with its own S and z.

All arithmetic runs in float32 (float64 inputs stay float64); the output has v's dtype.
"""
import torch

FOCUS_EPS = 1e-6  # FLatten adds this after the ReLU, so that the norms never vanish


def feature_map_ref(x, feature_map, focus_power=3.0):
    if feature_map == 'identity':
        return x
    if feature_map == 'elu1':
        return torch.nn.functional.elu(x) + 1.0
    if feature_map == 'relu':
        return torch.relu(x)
    if feature_map == 'focused':
        r = torch.relu(x) + FOCUS_EPS
        # phi is positively homogeneous of degree 1 in r, so dividing by the (detached) row max first changes
        # neither the value nor the gradient, but keeps r**p far from overflow for large inputs.
        m = r.amax(dim=-1, keepdim=True).detach()
        u = r / m
        up = u ** focus_power
        return m * up * (u.norm(dim=-1, keepdim=True) / up.norm(dim=-1, keepdim=True))
    raise ValueError(f'unknown feature_map {feature_map!r}')


def rotate_pairs(x, cos, sin):
    """Rotate interleaved pairs of the last dim: x [..., K], cos/sin broadcastable to [..., K/2]."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def expand_rope_table(t, B, N, H, K2):
    """cos/sin table of shape [N, K/2], [N, H, K/2] or [B, N, H, K/2] -> a [B, N, H, K/2] view."""
    if t.dim() == 2:
        t = t[None, :, None, :]
    elif t.dim() == 3:
        t = t[None]
    return t.expand(B, N, H, K2)


def _la_one(fq, fk, v, scale, eps, normalize, rq=None, rk=None):
    """One sequence: fq, fk [N, H, K] features; v [N, H, V]; rq, rk rotated features or None."""
    rq = fq if rq is None else rq
    rk = fk if rk is None else rk
    S = torch.einsum('nhk,nhv->hkv', rk, v)
    o = torch.einsum('nhk,hkv->nhv', rq, S)
    if normalize:
        z = fk.sum(0)                                            # [H, K]
        den = torch.einsum('nhk,hk->nh', fq, z) + eps
        o = o / den[..., None]
    return o * scale


def linear_attn_reference(q, k, v, *, feature_map='elu1', normalize=True, scale=None, eps=1e-6,
                          focus_power=3.0, rope=None, norm='standard', key_padding_mask=None,
                          cu_seqlens=None):
    """Reference of :func:`linear_attn`: q, k [B, N, H, K]; v [B, N, H, V] -> o [B, N, H, V] (v's dtype)."""
    out_dtype = v.dtype
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(cdt), k.to(cdt), v.to(cdt)
    B, N, H, K = q.shape
    fq = feature_map_ref(q, feature_map, focus_power)
    fk = feature_map_ref(k, feature_map, focus_power)
    rq = rk = None
    if rope is not None:
        cos = expand_rope_table(rope[0].to(cdt), B, N, H, K // 2)
        sin = expand_rope_table(rope[1].to(cdt), B, N, H, K // 2)
        rq, rk = rotate_pairs(fq, cos, sin), rotate_pairs(fk, cos, sin)

    def seq_consts(n):
        n = max(float(n), 1.0)
        sc = (1.0 if normalize else 1.0 / n) if scale is None else float(scale)
        ep = eps * n if norm == 'linfusion' else eps
        return sc, ep

    if cu_seqlens is not None:
        o = torch.zeros(B, N, H, v.shape[-1], dtype=cdt, device=v.device)
        bounds = cu_seqlens.tolist()
        for s in range(len(bounds) - 1):
            a, b = bounds[s], bounds[s + 1]
            if b <= a:
                continue
            sc, ep = seq_consts(b - a)
            sl = slice(a, b)
            o[0, sl] = _la_one(fq[0, sl], fk[0, sl], v[0, sl], sc, ep, normalize,
                               None if rq is None else rq[0, sl], None if rk is None else rk[0, sl])
        return o.to(out_dtype)

    # dense batch, vectorised over B (optionally with a key padding mask)
    rq = fq if rq is None else rq
    rk = fk if rk is None else rk
    if key_padding_mask is not None:
        m = key_padding_mask[:, :, None, None]
        fk = torch.where(m, fk, 0.0)
        rk = torch.where(m, rk, 0.0)
        v = torch.where(m, v, 0.0)
        n = key_padding_mask.sum(1).to(cdt).clamp_min(1.0)[:, None, None, None]    # [B, 1, 1, 1]
    else:
        n = torch.full((1, 1, 1, 1), float(max(N, 1)), dtype=cdt, device=q.device)
    S = torch.einsum('bnhk,bnhv->bhkv', rk, v)
    o = torch.einsum('bnhk,bhkv->bnhv', rq, S)
    if normalize:
        z = fk.sum(1)                                                           # [B, H, K]
        ep = eps * n[..., 0] if norm == 'linfusion' else eps
        den = torch.einsum('bnhk,bhk->bnh', fq, z) + ep
        o = o / den[..., None]
    if scale is not None:
        o = o * float(scale)
    elif not normalize:
        o = o / n
    if key_padding_mask is not None:
        o = torch.where(key_padding_mask[:, :, None, None], o, 0.0)
    return o.to(out_dtype)
