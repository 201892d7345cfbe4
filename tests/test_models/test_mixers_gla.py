"""GLA-family token mixers (gla, hgrn, hgrn2, lightnet, retnet, rwkv6): the shared mixer checks, each core
against a hand-written per-token recurrence of the published formula (float64), reversed passes against the
flipped sequence, and parameter counts at Small (dim 384, 6 heads) against the published layers' formulas."""
import pytest
import torch
import torch.nn.functional as F

from tests.test_models.mixer_checks import check_mixer, check_packed_equals_apart, make, rotate
from vla_mm.models.mixers._common import running_lse, shift_tokens
from vla_mm.models.mixers.base import MixerContext
from vla_mm.models.scans import build_scan

B, N, C, H = 2, 7, 32, 2


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
    heads = range(H)
    o = m.core(q, k, v, gk, heads)
    conv = [lambda t, c=c: causal_conv(t.flatten(2), c.weight).view_as(t) for c in (m.q_conv1d, m.k_conv1d, m.v_conv1d)]
    ref = gla_loop(conv[0](q), conv[1](k), conv[2](v), gk, dk ** -0.5)
    torch.testing.assert_close(o, ref, rtol=1e-9, atol=1e-9)
    assert_reverse_is_flip(m.core, (q, k, v, gk, heads))
    # a core given only head 1 (multi-head routes) uses head 1's convolution weights
    o1 = m.core(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], gk[:, :, 1:], heads[1:])
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


@pytest.mark.parametrize('reverse', [False, True])
def test_running_lse_is_the_log_of_the_running_sum(reverse):
    """z_t = log sum_{i <= t} exp(s_i) along dim 1 (i >= t when reverse), value and gradient, packed or not."""
    s = (4 * torch.randn(2, 7, 3, 5, dtype=torch.float64)).requires_grad_()
    e = s.exp()
    want = (e.flip(1).cumsum(1).flip(1) if reverse else e.cumsum(1)).log()
    z = running_lse(s, reverse)
    torch.testing.assert_close(z, want)
    w = torch.randn_like(z)
    got, = torch.autograd.grad((z * w).sum(), s)
    ref, = torch.autograd.grad((want * w).sum(), s)
    torch.testing.assert_close(got, ref)
    # packed: one sequence = the dense call on its tokens
    packed = running_lse(s[:1], reverse, cu_seqlens=torch.tensor([0, 3, 7]))
    torch.testing.assert_close(packed[:, 3:], running_lse(s[:1, 3:], reverse))


# -------------------------------------------------------------------------------------------------------- retnet
@pytest.mark.parametrize('cfg', [dict(type='retnet'), dict(type='retnet', use_short_conv=True, rotary=False)])
def test_retnet_checks(cfg):
    check_mixer(cfg)


def test_retnet_core_is_retention_with_fixed_decays():
    m = make(dict(type='retnet', num_heads=4)).double()
    Hr, dk, dv = 4, m.head_k_dim, m.head_v_dim
    q, k, v = rand(B, N, Hr, dk), rand(B, N, Hr, dk), rand(B, N, Hr, dv)
    heads = range(Hr)
    gamma = torch.tensor([1 - 2 ** (-5 - h) for h in range(Hr)], dtype=torch.float64)  # 31/32, 63/64, ...
    pos = torch.arange(N, dtype=torch.float64)
    qr, kr = rotate(q, pos), rotate(k, pos)
    o = torch.zeros(B, N, Hr, dv, dtype=torch.float64)
    for t in range(N):  # o_t = sum_{s<=t} gamma^(t-s) (q_t . k_s) v_s
        for s in range(t + 1):
            w = gamma ** (t - s) * (qr[:, t] * kr[:, s]).sum(-1) * dk ** -0.5
            o[:, t] += w[..., None] * v[:, s]
    torch.testing.assert_close(m.core(q, k, v, heads), o, rtol=1e-9, atol=1e-9)
    assert_reverse_is_flip(m.core, (q, k, v, heads))
    # heads 2 and 3 alone keep their own decays
    torch.testing.assert_close(m.core(q[:, :, 2:], k[:, :, 2:], v[:, :, 2:], heads[2:]), o[:, :, 2:])


def test_retnet_params_small():
    C, Hs = 384, 6
    K, V = C, 2 * C
    published = 2 * C * K + 2 * C * V + V * C + V // Hs  # q k v g o norm
    assert n_params(make(dict(type='retnet'), dim=C, num_heads=Hs)) == published


# ---------------------------------------------------------------------------------------------------------- hgrn
@pytest.mark.parametrize('cfg', [dict(type='hgrn'), dict(type='hgrn', use_short_conv=True, num_layers=12)])
def test_hgrn_checks(cfg):
    check_mixer(cfg)


def test_hgrn_lower_bound_layer_and_params():
    first = make(dict(type='hgrn', num_layers=12), layer_idx=0)
    assert first.lower_bound is None  # the first layer has none, as published
    m = make(dict(type='hgrn', num_layers=12), layer_idx=3)
    torch.testing.assert_close(m.lower_bound.logit.sigmoid(), torch.full((C,), 3 / 12))
    C_, Hs = 384, 6
    published = 3 * C_ * C_ + C_ + C_ * C_  # i f g, gated norm, o (expand_ratio 1)
    assert n_params(make(dict(type='hgrn'), dim=C_, num_heads=Hs)) == published
    # the lower bounds: the published model holds num_layers x C logits; here each layer > 0 holds its C
    assert n_params(make(dict(type='hgrn', num_layers=12), dim=C_, num_heads=Hs, layer_idx=5)) == published + C_


def test_hgrn_core_is_the_gated_recurrence():
    m = make(dict(type='hgrn', use_short_conv=True, num_layers=4), layer_idx=2).double()
    with torch.no_grad():
        m.lower_bound.logit.uniform_(-2, 2)
    d = m.head_dim
    i, f = rand(B, N, H, d), rand(B, N, H, d)
    heads = range(H)
    ic = causal_conv(i.flatten(2), m.i_conv1d.weight, act=False)
    fc = causal_conv(f.flatten(2), m.f_conv1d.weight, act=False)
    gamma = m.lower_bound.logit.sigmoid()
    ft = gamma + (1 - gamma) * fc.sigmoid()  # forget gate with its lower bound
    h = torch.zeros(B, H * d, dtype=torch.float64)
    ref = torch.zeros(B, N, H * d, dtype=torch.float64)
    for t in range(N):
        h = ft[:, t] * h + (1 - ft[:, t]) * F.silu(ic[:, t])
        ref[:, t] = h
    torch.testing.assert_close(m.core(i, f, heads), ref.view(B, N, H, d), rtol=1e-9, atol=1e-9)
    assert_reverse_is_flip(m.core, (i, f, heads))
    torch.testing.assert_close(m.core(i[:, :, 1:], f[:, :, 1:], heads[1:]), ref.view(B, N, H, d)[:, :, 1:])


# --------------------------------------------------------------------------------------------------------- hgrn2
@pytest.mark.parametrize('cfg', [dict(type='hgrn2'), dict(type='hgrn2', use_short_conv=True, expand_ratio=8,
                                                          num_layers=12)])
def test_hgrn2_checks(cfg):
    check_mixer(cfg)


def test_hgrn2_core_is_the_expanded_state_recurrence():
    m = make(dict(type='hgrn2', expand_ratio=8, use_short_conv=True, num_layers=4), layer_idx=1).double()
    with torch.no_grad():
        m.lower_bound.logit.uniform_(-2, 2)
    df, di = 8, C // H
    q, f, i = rand(B, N, H, df), rand(B, N, H, df), rand(B, N, H, di)
    heads = range(H)
    qc, fc, ic = (causal_conv(t.flatten(2), c.weight, act=False).view_as(t)
                  for t, c in ((q, m.q_conv1d), (f, m.f_conv1d), (i, m.i_conv1d)))
    gamma = m.lower_bound.logit.sigmoid().view(H, df)
    ft = gamma + (1 - gamma) * fc.sigmoid()  # forget gate with its lower bound
    S = torch.zeros(B, H, df, di, dtype=torch.float64)  # per head an expand_ratio x (C/H) state
    ref = torch.zeros(B, N, H, di, dtype=torch.float64)
    for t in range(N):
        S = ft[:, t, :, :, None] * S + (1 - ft[:, t])[..., None] * ic[:, t, :, None, :]  # outer product
        ref[:, t] = torch.einsum('bhf,bhfi->bhi', F.silu(qc[:, t]), S) * df ** -0.5
    torch.testing.assert_close(m.core(q, f, i, heads), ref, rtol=1e-9, atol=1e-9)
    assert_reverse_is_flip(m.core, (q, f, i, heads))
    torch.testing.assert_close(m.core(q[:, :, 1:], f[:, :, 1:], i[:, :, 1:], heads[1:]), ref[:, :, 1:])


@pytest.mark.parametrize('expand_ratio', [None, 128])
def test_hgrn2_params_small(expand_ratio):
    C_, Hs = 384, 6
    Fd = Hs * (expand_ratio or C_ // Hs)  # forget / query width: heads x state expansion
    published = 2 * C_ * Fd + C_ * C_ + C_ + C_ * C_  # q f i, norm, o
    assert n_params(make(dict(type='hgrn2', expand_ratio=expand_ratio), dim=C_, num_heads=Hs)) == published


# ------------------------------------------------------------------------------------------------------ lightnet
@pytest.mark.parametrize('cfg', [dict(type='lightnet'), dict(type='lightnet', use_short_conv=True, expand_ratio=8)])
def test_lightnet_checks(cfg):
    check_mixer(cfg)


def test_lightnet_core_is_a_running_softmax_of_the_keys():
    m = make(dict(type='lightnet', expand_ratio=8)).double()
    dk, dv = 8, C // H
    q, k, v = rand(B, N, H, dk), 3 * rand(B, N, H, dk), rand(B, N, H, dv)
    heads = range(H)
    ref = torch.zeros(B, N, H, dv, dtype=torch.float64)
    for t in range(N):  # per key channel, the values so far weighted by a softmax of their keys
        w = torch.softmax(k[:, :t + 1], dim=1)  # [B, t+1, H, dk]
        S = torch.einsum('bshk,bshv->bhkv', w, v[:, :t + 1])
        ref[:, t] = torch.einsum('bhk,bhkv->bhv', F.silu(q[:, t]), S) * dk ** -0.5
    torch.testing.assert_close(m.core(q, k, v, heads), ref, rtol=1e-9, atol=1e-9)
    assert_reverse_is_flip(m.core, (q, k, v, heads))
    # packed sequences: each one normalises on its own
    cu = torch.tensor([0, 3, N])
    packed = m.core(q[:1], k[:1], v[:1], heads, cu_seqlens=cu)
    torch.testing.assert_close(packed[:, 3:], m.core(q[:1, 3:], k[:1, 3:], v[:1, 3:], heads))
    torch.testing.assert_close(m.core(q[:1], k[:1], v[:1], heads, reverse=True, cu_seqlens=cu)[:, :3],
                               m.core(q[:1, :3], k[:1, :3], v[:1, :3], heads, reverse=True))


def test_lightnet_params_small():
    C_, Hs = 384, 6
    K = C_  # heads x expand_ratio (default the head size)
    published = 2 * C_ * K + C_ * C_ + (C_ * 128 + 128 * C_) + C_ + C_ * C_  # q k v, rank-128 gate, norm, o
    assert n_params(make(dict(type='lightnet'), dim=C_, num_heads=Hs)) == published


# --------------------------------------------------------------------------------------------------------- rwkv6
# init='zero': the default RWKV schedule starts W_o at zero (a silent branch), which the shared checks cannot
# see through
@pytest.mark.parametrize('cfg', [dict(type='rwkv6', init='zero')])
def test_rwkv6_checks(cfg):
    check_mixer(cfg)


def test_rwkv6_core_is_the_finch_time_mix():
    m = make(dict(type='rwkv6')).double()
    with torch.no_grad():  # away from the zero initialisation so that every term shows
        m.x_mu.normal_()
        m.bonus.normal_()
        m.norm_weight.normal_()
        m.norm_bias.normal_()
        for up in m.x_up:
            up.bias.normal_()
    dk, dv = m.head_k_dim, m.head_v_dim
    x = rand(B, N, C)
    heads = range(H)
    x1 = x.unsqueeze(2)  # one copy of the tokens for all heads
    lin = lambda mod, t: mod(t)  # noqa: E731
    S = torch.zeros(B, H, dk, dv, dtype=torch.float64)
    ref = torch.zeros(B, N, H, dv, dtype=torch.float64)
    for t in range(N):
        xt = x[:, t]
        delta = (x[:, t - 1] if t > 0 else torch.zeros_like(xt)) - xt  # token shift: the previous token
        z = torch.tanh(lin(m.x_down, xt + delta * m.x_mu)).view(B, 5, -1)
        mix = [lin(m.x_up[j], z[:, j]) for j in range(5)]
        r, w, k, v, g = (lin(p, xt + delta * mj) for p, mj in
                         zip((m.r_proj, m.w_proj, m.k_proj, m.v_proj, m.g_proj), mix))
        r, w, k = (a.view(B, H, dk) for a in (r, w, k))
        v, g = v.view(B, H, dv), g.view(B, H, dv)
        kv = k[..., None] * v[..., None, :]
        o = torch.einsum('bhk,bhkv->bhv', r, S + m.bonus[None, :, :, None] * kv)  # bonus: the current token
        S = torch.exp(-torch.exp(w))[..., None] * S + kv
        mu, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
        o = (o - mu) / torch.sqrt(var + 1e-5) * m.norm_weight.view(H, dv) + m.norm_bias.view(H, dv)
        ref[:, t] = o * F.silu(g)
    torch.testing.assert_close(m.core(x1, heads), ref, rtol=1e-9, atol=1e-9)
    assert_reverse_is_flip(m.core, (x1, heads))
    torch.testing.assert_close(m.core(x1, heads[1:]), ref[:, :, 1:])


def test_rwkv6_tokens_shared_by_heads_follow_the_route():
    """rwkv6 hands a route one copy of the tokens for all heads (``[B, N, 1, C]``): under ``cross`` it is gathered
    once per order and every head reads it; the result equals the four passes run by hand on the transposed grid."""
    m = make(dict(type='rwkv6')).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = rand(B, 15, C)
    col = torch.arange(15).view(3, 5).t().reshape(-1)  # column-major order of the 3 x 5 grid

    def both_ways(t):
        return m.core(t[:, :, None], range(H)) + m.core(t[:, :, None], range(H), reverse=True)
    ref = m.o_proj((both_ways(x) + both_ways(x[:, col])[:, torch.argsort(col)]).flatten(2))
    torch.testing.assert_close(m(x, MixerContext(hw=(3, 5), route=build_scan('cross'))), ref, rtol=1e-10, atol=1e-10)


def test_rwkv6_params_small():
    C_, Hs = 384, 6
    K, V, r, rw = C_ // 2, C_, 32, 64
    published = (C_ + C_ * 5 * r + 5 * r * C_ + 5 * C_  # ddlerp: mu, LoRA down / up, x_bias
                 + 2 * C_ * K + 2 * C_ * V  # r k v g
                 + C_ * rw + rw * K + K  # decay LoRA
                 + K + 2 * V + V * C_)  # bonus, GroupNorm, o
    assert n_params(make(dict(type='rwkv6'), dim=C_, num_heads=Hs)) == published


def test_rwkv6_init_follows_the_depth_and_survives_the_backbone_init(tmp_path):
    """``init='rwkv'``: RWKV-LM's v6 schedule per layer, applied again after the backbone's TruncNormal (which
    redraws every Linear) and before a ``Pretrained`` checkpoint (which must win); ``init='zero'``: fla's zeros."""
    from vla_mm.registry import MODELS
    cfg = dict(type='vla_mm.IsotropicBackbone', arch=dict(embed_dims=32, num_layers=3, num_heads=2), img_size=16,
               patch_size=8, mixer=dict(type='rwkv6'))
    bb = MODELS.build(cfg)
    bb.init_weights()
    K = bb.layers[0].mixer.key_dim
    n = torch.arange(K) / (K - 1)
    for l, layer in enumerate(bb.layers):
        m = layer.mixer
        assert (m.layer_idx, m.num_layers) == (l, 3)
        r01, r1 = l / 2, 1 - l / 3
        torch.testing.assert_close(m.w_proj[2].bias.detach(), -6 + 5 * n ** (0.7 + 1.3 * r01))
        assert not m.x_down.weight.any() and not m.w_proj[0].weight.any()
        assert 0 < m.x_up[0].weight.abs().max() <= 0.01
        ddd = torch.arange(32) / 32
        torch.testing.assert_close(m.x_mu.detach(), 1 - ddd ** r1)
        torch.testing.assert_close(m.x_up[3].bias.detach(), 1 - (ddd ** r1 + 0.3 * r01))  # v
        torch.testing.assert_close(m.bonus.detach().flatten(), r01 * (1 - n) + ((torch.arange(K) + 1) % 3 - 1) * 0.1)
    # decays start slow: exp(-exp(w_0)) in [exp(-e^-1), exp(-e^-6)]
    decay = torch.exp(-bb.layers[0].mixer.w_proj[2].bias.exp())
    assert decay.min() > 0.69 and decay.max() > 0.997
    # a checkpoint loaded through init_cfg keeps its own values
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(1.0)
    torch.save(bb.state_dict(), tmp_path / 'bb.pth')
    loaded = MODELS.build(dict(cfg, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'bb.pth'))))
    loaded.init_weights()
    for (k, a), b in zip(bb.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    zero = make(dict(type='rwkv6', init='zero', num_layers=3), layer_idx=1)
    for t in [zero.x_mu, zero.bonus, zero.w_proj[2].bias] + [up.bias for up in zero.x_up]:
        assert not t.any()
    with pytest.raises(ValueError, match='init'):
        make(dict(type='rwkv6', init='fancy'))


# ------------------------------------------------------------------------------------------------ head groups
@pytest.mark.parametrize('cfg', [
    dict(type='gla', use_short_conv=True), dict(type='retnet', use_short_conv=True),
    dict(type='hgrn', use_short_conv=True, num_layers=4), dict(type='hgrn2', use_short_conv=True, num_layers=4),
    dict(type='lightnet', use_short_conv=True), dict(type='rwkv6')])
def test_head_groups_keep_their_own_parameters(cfg):
    """A multi-head route whose groups all scan row-major is the plain pass: each group's core call must use its
    own heads' convolutions, decays, lower bounds, bonus and norms."""
    m = make(cfg, num_heads=4, layer_idx=2)
    for p in m.parameters():  # no zero-initialised parameter may hide a misplaced head
        with torch.no_grad():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(B, 15, C)
    with torch.no_grad():
        plain = m(x, MixerContext(hw=(3, 5)))
        grouped = m(x, MixerContext(hw=(3, 5), route=build_scan(dict(type='multi_head_2d', directions=('row', 'row')))))
    torch.testing.assert_close(grouped, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('cfg', [
    dict(type='gla', use_short_conv=True), dict(type='retnet', use_short_conv=True),
    dict(type='hgrn', use_short_conv=True), dict(type='hgrn2', use_short_conv=True),
    dict(type='lightnet', use_short_conv=True), dict(type='rwkv6')])
@pytest.mark.parametrize('route', [None, 'bi'])
def test_packed_sequences_equal_separate_ones(cfg, route):
    """Two images packed into one sequence (cu_seqlens) give what they give apart: short convolutions, token
    shifts and running normalisers stop at the boundary, in both directions."""
    check_packed_equals_apart(cfg, route)
