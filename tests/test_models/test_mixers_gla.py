"""GLA-family token mixers (gla, hgrn, hgrn2, lightnet, retnet, rwkv6): the shared mixer checks, each core
against a hand-written per-token recurrence of the published formula (float64), reversed passes against the
flipped sequence, and parameter counts at Small (dim 384, 6 heads) against the published layers' formulas."""
import pytest
import torch
import torch.nn.functional as F

import vla_mm.ops.common as ops_common
from tests.test_models.mixer_checks import check_mixer, make
from vla_mm.models.mixers._common import head_ids, shift_tokens

B, N, C, H = 2, 7, 32, 2


@pytest.fixture(autouse=True)
def float64_reference_ops(monkeypatch):
    """The CPU references compute in float64 when given float64, but the gla / hgrn ops' dtype check still
    refuses it (linear_attn accepts it); let float64 through until ops/ does so itself."""
    if torch.float64 not in ops_common.SUPPORTED_DTYPES:
        monkeypatch.setattr(ops_common, 'SUPPORTED_DTYPES', ops_common.SUPPORTED_DTYPES + (torch.float64,))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def flip(t):
    return t.flip(1) if isinstance(t, torch.Tensor) else t


def assert_reverse_is_flip(core, inputs, **kw):
    """A reversed pass equals the forward pass of the flipped sequence, flipped back."""
    rev = core(*inputs, reverse=True, **kw)
    ref = core(*[flip(t) for t in inputs], reverse=False, **kw).flip(1)
    torch.testing.assert_close(rev, ref, rtol=1e-10, atol=1e-10)


def causal_conv(x, w, act=True):
    """Per-token depthwise causal convolution: o_t = sum_i w[:, i] x_{t-(W-1)+i}; x [B, N, D], w [D, W]."""
    W = w.shape[1]
    o = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for i in range(W):
            s = t - (W - 1) + i
            if s >= 0:
                o[:, t] += w[:, i] * x[:, s]
    return F.silu(o) if act else o


def gla_loop(q, k, v, gk, scale, u=None):
    """S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t; with u (RWKV6):
    o_t = scale (S_{t-1} + diag(u) k_t v_t^T)^T q_t."""
    Bq, Nq, Hq, K = q.shape
    S = torch.zeros(Bq, Hq, K, v.shape[-1], dtype=q.dtype)
    o = torch.zeros(Bq, Nq, Hq, v.shape[-1], dtype=q.dtype)
    for t in range(Nq):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        if u is not None:
            o[:, t] = scale * torch.einsum('bhk,bhkv->bhv', q[:, t], S + u[None, :, :, None] * kv)
        S = S * gk[:, t].exp()[..., None] + kv
        if u is None:
            o[:, t] = scale * torch.einsum('bhk,bhkv->bhv', q[:, t], S)
    return o


# ----------------------------------------------------------------------------------------------------------- gla
@pytest.mark.parametrize('cfg', [dict(type='gla'), dict(type='gla', use_short_conv=True, feature_map='relu')])
def test_gla_checks(cfg):
    check_mixer(cfg)


def test_gla_core_is_the_gated_recurrence():
    m = make(dict(type='gla', use_short_conv=True)).double()
    dk, dv = m.head_k_dim, m.head_v_dim
    q, k, v = rand(B, N, H, dk), rand(B, N, H, dk), rand(B, N, H, dv)
    gk = F.logsigmoid(rand(B, N, H, dk)) / 16
    hid = head_ids(q, H)
    o = m.core(q, k, v, gk, hid)
    conv = [lambda t, c=c: causal_conv(t.flatten(2), c.weight).view_as(t) for c in (m.q_conv1d, m.k_conv1d, m.v_conv1d)]
    ref = gla_loop(conv[0](q), conv[1](k), conv[2](v), gk, dk ** -0.5)
    torch.testing.assert_close(o, ref, rtol=1e-9, atol=1e-9)
    assert_reverse_is_flip(m.core, (q, k, v, gk, hid))
    # a core given only head 1 (multi-head routes) uses head 1's convolution weights
    o1 = m.core(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], gk[:, :, 1:], hid[:, :, 1:])
    torch.testing.assert_close(o1, o[:, :, 1:], rtol=1e-10, atol=1e-10)


def test_gla_params_small():
    C, Hs = 384, 6
    K, V = C // 2, C
    published = 2 * C * K + 2 * C * V + (C * 16 + 16 * K + K) + V * C + V // Hs  # q k v g gk o norm
    assert n_params(make(dict(type='gla'), dim=C, num_heads=Hs)) == published
    conv = 4 * (K + K + V)
    assert n_params(make(dict(type='gla', use_short_conv=True), dim=C, num_heads=Hs)) == published + conv


def test_shift_tokens_respects_packed_sequences():
    x = torch.arange(1., 8.).view(1, 7, 1)
    cu = torch.tensor([0, 3, 7])
    assert shift_tokens(x, 1, cu_seqlens=cu).flatten().tolist() == [0, 1, 2, 0, 4, 5, 6]
    assert shift_tokens(x, 1, reverse=True, cu_seqlens=cu).flatten().tolist() == [2, 3, 0, 5, 6, 7, 0]
    assert shift_tokens(x, 2).flatten().tolist() == [0, 0, 1, 2, 3, 4, 5]


# -------------------------------------------------------------------------------------------------------- retnet
@pytest.mark.parametrize('cfg', [dict(type='retnet'), dict(type='retnet', use_short_conv=True, rotary=False)])
def test_retnet_checks(cfg):
    check_mixer(cfg)


def rotate(x, pos, base=10000.0):
    """Rotary embedding written out per pair (i, i + d/2): angle pos * base^(-2i/d)."""
    d = x.shape[-1]
    out = x.clone()
    for i in range(d // 2):
        a = pos * base ** (-2 * i / d)
        c, s = torch.cos(a)[None, :, None], torch.sin(a)[None, :, None]
        out[..., i] = x[..., i] * c - x[..., i + d // 2] * s
        out[..., i + d // 2] = x[..., i + d // 2] * c + x[..., i] * s
    return out


def test_retnet_core_is_retention_with_fixed_decays():
    m = make(dict(type='retnet', num_heads=4)).double()
    Hr, dk, dv = 4, m.head_k_dim, m.head_v_dim
    q, k, v = rand(B, N, Hr, dk), rand(B, N, Hr, dk), rand(B, N, Hr, dv)
    hid = head_ids(q, Hr)
    gamma = torch.tensor([1 - 2 ** (-5 - h) for h in range(Hr)], dtype=torch.float64)  # 31/32, 63/64, ...
    pos = torch.arange(N, dtype=torch.float64)
    qr, kr = rotate(q, pos), rotate(k, pos)
    o = torch.zeros(B, N, Hr, dv, dtype=torch.float64)
    for t in range(N):  # o_t = sum_{s<=t} gamma^(t-s) (q_t . k_s) v_s
        for s in range(t + 1):
            w = gamma ** (t - s) * (qr[:, t] * kr[:, s]).sum(-1) * dk ** -0.5
            o[:, t] += w[..., None] * v[:, s]
    torch.testing.assert_close(m.core(q, k, v, hid), o, rtol=1e-9, atol=1e-9)
    assert_reverse_is_flip(m.core, (q, k, v, hid))
    # heads 2 and 3 alone keep their own decays
    torch.testing.assert_close(m.core(q[:, :, 2:], k[:, :, 2:], v[:, :, 2:], hid[:, :, 2:]), o[:, :, 2:])


def test_retnet_params_small():
    C, Hs = 384, 6
    K, V = C, 2 * C
    published = 2 * C * K + 2 * C * V + V * C + V // Hs  # q k v g o norm
    assert n_params(make(dict(type='retnet'), dim=C, num_heads=Hs)) == published
