"""Delta-rule, slot and softmax token mixers (deltanet, gated_deltanet, gsa, abc, transformer, bitnet) and
BitLinear: the shared mixer checks, each core against a hand-written per-token recurrence of the published
formula (float64), reversed passes against the flipped sequence, softmax attention by hand, BitLinear's ternary
forward and straight-through backward, and parameter counts at Small (dim 384, 6 heads) by the published
layers' formulas."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.test_models.mixer_checks import check_mixer, check_packed_equals_apart, make, rotate, run
from vla_mm.models.layers.bitlinear import BitLinear
from vla_mm.models.mixers.base import MixerContext, build_mixer
from vla_mm.models.mixers.transformer import apply_rope_2d, grid_positions
from vla_mm.models.scans import build_scan

B, N, C, H = 2, 7, 32, 2
SMALL_C, SMALL_H = 384, 6


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def assert_reverse_is_flip(core, inputs, **kw):
    """A reversed pass equals the forward pass of the flipped sequence, flipped back."""
    rev = core(*inputs, reverse=True, **kw)
    ref = core(*[t.flip(1) if isinstance(t, torch.Tensor) else t for t in inputs], reverse=False, **kw).flip(1)
    torch.testing.assert_close(rev, ref, rtol=1e-10, atol=1e-10)


def causal_conv(x, w, act=True):
    """Per-token depthwise causal convolution o_t = sum_i w[:, i] x_{t-(W-1)+i} of x [B, N, Hs, d], w [Hs*d, W]."""
    xf, W = x.flatten(2), w.shape[1]
    o = torch.zeros_like(xf)
    for t in range(x.shape[1]):
        for i in range(W):
            if t - (W - 1) + i >= 0:
                o[:, t] += w[:, i] * xf[:, t - (W - 1) + i]
    return (F.silu(o) if act else o).view_as(x)


def delta_loop(q, k, v, beta, log_alpha=None):
    """The paper's form, token by token: S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T
    (S [dv, dk]), o_t = S_t q_t / sqrt(dk)."""
    Bq, Nq, Hq, K = q.shape
    S = torch.zeros(Bq, Hq, v.shape[-1], K, dtype=q.dtype)
    eye = torch.eye(K, dtype=q.dtype)
    o = torch.zeros(Bq, Nq, Hq, v.shape[-1], dtype=q.dtype)
    for t in range(Nq):
        kt, bt = k[:, t], beta[:, t, :, None, None]
        a = 1.0 if log_alpha is None else log_alpha[:, t].exp()[..., None, None]
        S = a * S @ (eye - bt * kt[..., :, None] * kt[..., None, :]) + bt * v[:, t, ..., :, None] * kt[..., None, :]
        o[:, t] = (S @ q[:, t, ..., None])[..., 0] * K ** -0.5
    return o


def slot_loop(q, k, v, s, log_alpha, scale):
    """Gated slot attention token by token: K_t = K_{t-1} diag(alpha_t) + k_t s_t^T, V_t = diag(alpha_t) V_{t-1} +
    s_t v_t^T, o_t = V_t^T softmax(scale K_t^T q_t)."""
    Bq, Nq, Hq, K = q.shape
    M = s.shape[-1]
    Km = torch.zeros(Bq, Hq, K, M, dtype=q.dtype)
    Vm = torch.zeros(Bq, Hq, M, v.shape[-1], dtype=q.dtype)
    o = torch.zeros(Bq, Nq, Hq, v.shape[-1], dtype=q.dtype)
    for t in range(Nq):
        a = log_alpha[:, t].exp()
        Km = Km * a[..., None, :] + k[:, t, ..., :, None] * s[:, t, ..., None, :]
        Vm = Vm * a[..., :, None] + s[:, t, ..., :, None] * v[:, t, ..., None, :]
        p = torch.einsum('bhk,bhkm->bhm', q[:, t] * scale, Km).softmax(-1)
        o[:, t] = torch.einsum('bhm,bhmv->bhv', p, Vm)
    return o


SLOT_TOL = dict(rtol=1e-9, atol=1e-9)  # the gsa op keeps float64 inputs in float64 (its slot softmax too)


def conv_weights(m):
    return [c.weight for c in (m.q_conv1d, m.k_conv1d, m.v_conv1d)]


# ------------------------------------------------------------------------------------------------------ deltanet
@pytest.mark.parametrize('cfg', [dict(type='deltanet'),
                                 dict(type='deltanet', use_gate=True, use_short_conv=False, qk_activation='elu',
                                      qk_norm='sum')])
def test_deltanet_checks(cfg):
    check_mixer(cfg)


def test_deltanet_core_is_the_delta_rule():
    m = make(dict(type='deltanet')).double()
    dk, dv = m.head_k_dim, m.head_v_dim
    q, k, v, beta = rand(B, N, H, dk), rand(B, N, H, dk), rand(B, N, H, dv), torch.rand(B, N, H, dtype=torch.float64)
    heads = range(H)
    o = m.core(q, k, v, beta, heads)
    wq, wk, wv = conv_weights(m)
    qc, kc = (F.normalize(causal_conv(t, w), dim=-1) for t, w in ((q, wq), (k, wk)))
    torch.testing.assert_close(o, delta_loop(qc, kc, causal_conv(v, wv), beta), rtol=1e-9, atol=1e-9)
    assert_reverse_is_flip(m.core, (q, k, v, beta, heads))
    # a core given only head 1 (multi-head routes) uses head 1's convolution weights
    o1 = m.core(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], beta[:, :, 1:], heads[1:])
    torch.testing.assert_close(o1, o[:, :, 1:], rtol=1e-10, atol=1e-10)


def test_deltanet_params_small():
    C, Hs = SMALL_C, SMALL_H
    published = 4 * C * C + C * Hs + 3 * 4 * C + C // Hs  # q k v o, b, 3 convs of kernel 4, o_norm
    assert n_params(make(dict(type='deltanet'), dim=C, num_heads=Hs)) == published
    assert n_params(make(dict(type='deltanet', use_gate=True), dim=C, num_heads=Hs)) == published + C * C


# ------------------------------------------------------------------------------------------------ gated_deltanet
@pytest.mark.parametrize('cfg', [dict(type='gated_deltanet'),
                                 dict(type='gated_deltanet', use_gate=False, use_short_conv=False, head_dim=8,
                                      allow_neg_eigval=True)])
def test_gated_deltanet_checks(cfg):
    check_mixer(cfg)


def test_gated_deltanet_gate_and_core():
    m = make(dict(type='gated_deltanet')).double()
    assert m.head_k_dim == 3 * C // (4 * H) and m.head_v_dim == 2 * m.head_k_dim
    # Mamba2 initialisation: A in [1, 16], softplus(dt_bias) in [1e-3, 1e-1]
    assert ((m.A_log.exp() >= 1) & (m.A_log.exp() <= 16)).all()
    assert ((F.softplus(m.dt_bias) >= 1e-3 - 1e-9) & (F.softplus(m.dt_bias) <= 0.1 + 1e-9)).all()
    x = rand(B, N, C)
    a = x @ m.a_proj.weight.T
    torch.testing.assert_close(m.log_decay(x), -m.A_log.exp() * torch.log1p(torch.exp(a + m.dt_bias)))

    dk, dv = m.head_k_dim, m.head_v_dim
    q, k, v = rand(B, N, H, dk), rand(B, N, H, dk), rand(B, N, H, dv)
    g, beta = m.log_decay(x), torch.rand(B, N, H, dtype=torch.float64)
    heads = range(H)
    o = m.core(q, k, v, g, beta, heads)
    wq, wk, wv = conv_weights(m)
    qc, kc = (F.normalize(causal_conv(t, w), dim=-1) for t, w in ((q, wq), (k, wk)))
    torch.testing.assert_close(o, delta_loop(qc, kc, causal_conv(v, wv), beta, g), rtol=1e-9, atol=1e-9)
    assert_reverse_is_flip(m.core, (q, k, v, g, beta, heads))
    o1 = m.core(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], g[:, :, 1:], beta[:, :, 1:], heads[1:])
    torch.testing.assert_close(o1, o[:, :, 1:], rtol=1e-10, atol=1e-10)


def test_gated_deltanet_params_small():
    C, Hs = SMALL_C, SMALL_H
    K, V = 3 * C // 4, 3 * C // 2  # fla: num_heads * head_dim = 0.75 C, expand_v 2
    published = 2 * C * K + 3 * C * V + 2 * C * Hs + 2 * Hs + 4 * (K + K + V) + V // Hs
    assert published - 6 * C * C < 0.02 * 6 * C * C  # "about 6 C^2" (fla's docstring)
    assert n_params(make(dict(type='gated_deltanet'), dim=C, num_heads=Hs)) == published


# ----------------------------------------------------------------------------------------------------------- gsa
@pytest.mark.parametrize('cfg', [dict(type='gsa', num_slots=8),
                                 dict(type='gsa', num_slots=8, use_short_conv=True, feature_map='relu')])
def test_gsa_checks(cfg):
    check_mixer(cfg)


def test_gsa_core_is_gated_slot_attention():
    m = make(dict(type='gsa', num_slots=6, use_short_conv=True)).double()
    dk, dv, M = m.head_k_dim, m.head_v_dim, m.num_slots
    q, k, v = rand(B, N, H, dk), rand(B, N, H, dk), rand(B, N, H, dv)
    f = F.logsigmoid(rand(B, N, H, M)) / 8
    heads = range(H)
    o = m.core(q, k, v, f, heads)
    wq, wk, wv = conv_weights(m)
    qc, kc, vc = (F.silu(causal_conv(t, w)) for t, w in ((q, wq), (k, wk), (v, wv)))  # conv SiLU, then maps
    torch.testing.assert_close(o, slot_loop(qc, kc, vc, 1 - f.exp(), f, 1.0), **SLOT_TOL)
    assert_reverse_is_flip(m.core, (q, k, v, f, heads))
    o1 = m.core(q[:, :, 1:], k[:, :, 1:], v[:, :, 1:], f[:, :, 1:], heads[1:])
    torch.testing.assert_close(o1, o[:, :, 1:], rtol=1e-10, atol=1e-10)


def test_gsa_forward_gate_and_output_norm():
    """forget gate logsigmoid(W_f x) / 8, output o_proj(RMSNorm(silu(o)))."""
    m = make(dict(type='gsa', num_slots=4)).double()
    x = rand(B, N, C)
    dk, dv = m.head_k_dim, m.head_v_dim
    q, k = (F.silu(x @ p.weight.T).view(B, N, H, dk) for p in (m.q_proj, m.k_proj))
    v = F.silu(x @ m.v_proj.weight.T).view(B, N, H, dv)
    f = F.logsigmoid(x @ m.f_proj.weight.T).view(B, N, H, 4) / 8
    o = F.silu(slot_loop(q, k, v, 1 - f.exp(), f, 1.0).flatten(2))
    o = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + 1e-5) * m.g_norm.weight
    torch.testing.assert_close(run(m, x), o @ m.o_proj.weight.T, rtol=1e-4, atol=1e-6)  # norm: rel


def test_gsa_params_small():
    C, Hs = SMALL_C, SMALL_H
    published = 4 * C * C + C * Hs * 64 + C  # q k v o, f (64 slots per head), g_norm over C
    assert n_params(make(dict(type='gsa'), dim=C, num_heads=Hs)) == published


# ----------------------------------------------------------------------------------------------------------- abc
@pytest.mark.parametrize('cfg', [dict(type='abc', num_slots=8),
                                 dict(type='abc', num_slots=8, use_rope=False, use_short_conv=True,
                                      use_output_gate=False, use_input_gate=True)])
def test_abc_checks(cfg):
    check_mixer(cfg)


def test_abc_core_is_bounded_memory_control():
    """The paper's form: slots are running averages weighted by exp(s); o_t = V_t^T softmax(K_t q_t / sqrt(d))."""
    m = make(dict(type='abc', num_slots=5)).double()
    dk, dv, M = m.head_k_dim, m.head_v_dim, m.num_slots
    q, k, v, s = rand(B, N, H, dk), rand(B, N, H, dk), rand(B, N, H, dv), 3 * rand(B, N, H, M)
    heads = range(H)
    pos = torch.arange(N, dtype=torch.float64)
    qr, kr = rotate(q, pos), rotate(k, pos)
    ref = torch.zeros(B, N, H, dv, dtype=torch.float64)
    for t in range(N):
        phi = s[:, :t + 1].exp()                                                   # [B, t+1, H, M]
        Kt = torch.einsum('bihm,bihk->bhmk', phi, kr[:, :t + 1]) / phi.sum(1)[..., None]
        Vt = torch.einsum('bihm,bihv->bhmv', phi, v[:, :t + 1]) / phi.sum(1)[..., None]
        p = torch.einsum('bhmk,bhk->bhm', Kt, qr[:, t] * dk ** -0.5).softmax(-1)
        ref[:, t] = torch.einsum('bhm,bhmv->bhv', p, Vt)
    o = m.core(q, k, v, s, heads)
    torch.testing.assert_close(o, ref, **SLOT_TOL)
    assert_reverse_is_flip(m.core, (q, k, v, s, heads))
    # packed sequences: the running averages restart at each sequence, in either direction
    cu = torch.tensor([0, 3, 7])
    for rev in (False, True):
        packed = m.core(q[:1], k[:1], v[:1], s[:1], heads, reverse=rev, cu_seqlens=cu)
        parts = [m.core(q[:1, a:b], k[:1, a:b], v[:1, a:b], s[:1, a:b], heads, reverse=rev)
                 for a, b in ((0, 3), (3, 7))]
        torch.testing.assert_close(packed, torch.cat(parts, 1), rtol=1e-10, atol=1e-10)


def test_abc_params_small():
    C, Hs = SMALL_C, SMALL_H
    K = C // 2
    published = 2 * C * K + 3 * C * C + C * Hs * 64 + C // Hs  # q k, v g o, s (64 slots per head), g_norm
    assert n_params(make(dict(type='abc'), dim=C, num_heads=Hs)) == published


# ------------------------------------------------------------------------------------------ transformer / bitnet
@pytest.mark.parametrize('cfg', [dict(type='transformer'), dict(type='transformer', qk_norm=True, rope=True),
                                 dict(type='bitnet')])
def test_attention_checks(cfg):
    check_mixer(cfg, atol64=1e-3 if cfg['type'] == 'bitnet' else 1e-4)


def test_transformer_is_softmax_attention():
    m = make(dict(type='transformer', qkv_bias=True, proj_bias=True)).double()
    x = rand(B, 15, C)
    d = C // H
    q, k, v = ((x @ p.weight.T + p.bias).view(B, 15, H, d).transpose(1, 2) for p in (m.q_proj, m.k_proj, m.v_proj))
    a = (q @ k.transpose(-1, -2) * d ** -0.5).softmax(-1)
    ref = (a @ v).transpose(1, 2).reshape(B, 15, C) @ m.o_proj.weight.T + m.o_proj.bias
    torch.testing.assert_close(run(m, x), ref, rtol=1e-9, atol=1e-9)
    # order-free: permuting the tokens permutes the output
    perm = torch.randperm(15)
    torch.testing.assert_close(run(m, x[:, perm]), ref[:, perm], rtol=1e-9, atol=1e-9)
    # packed sequences attend only within themselves
    cu = torch.tensor([0, 6, 15])
    packed = m(x[:1], MixerContext(hw=(3, 5), cu_seqlens=cu))
    parts = [m(x[:1, a:b], MixerContext(hw=(1, b - a))) for a, b in ((0, 6), (6, 15))]
    torch.testing.assert_close(packed, torch.cat(parts, 1), rtol=1e-9, atol=1e-9)


def test_rope_2d_scores_depend_on_grid_offsets_only():
    q, k = rand(1, 1, 1, 8).expand(1, 15, 1, 8), rand(1, 1, 1, 8).expand(1, 15, 1, 8)
    ctx = MixerContext(hw=(3, 5))
    pos = grid_positions(ctx, 15, 'cpu')
    qr, kr = apply_rope_2d(q, pos), apply_rope_2d(k, pos)
    scores = torch.einsum('bihd,bjhd->ij', qr, kr)
    r, c = pos[0, :, 0], pos[0, :, 1]
    for i in range(15):
        for j in range(15):  # (i, j) and the pair shifted to the origin have the same offset
            i0 = int((r[i] - min(r[i], r[j])) * 5 + c[i] - min(c[i], c[j]))
            j0 = int((r[j] - min(r[i], r[j])) * 5 + c[j] - min(c[i], c[j]))
            torch.testing.assert_close(scores[i, j], scores[i0, j0], rtol=1e-9, atol=1e-9)
    assert not torch.allclose(scores[0, 1], scores[0, 5])  # a row step and a column step differ
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))
    # MAE: kept tokens get their own cells' rotations
    ids = torch.tensor([[3, 9, 14]])
    torch.testing.assert_close(grid_positions(MixerContext(hw=(3, 5), ids_keep=ids), 3, 'cpu'), pos[:, ids[0]])


def test_attention_params_small():
    C, Hs = SMALL_C, SMALL_H
    assert n_params(make(dict(type='transformer'), dim=C, num_heads=Hs)) == 4 * C * C
    # fla BitAttention: four bias-free BitLinear, each with an RMSNorm weight over its input
    assert n_params(make(dict(type='bitnet'), dim=C, num_heads=Hs)) == 4 * C * C + 4 * C


# ------------------------------------------------------------------------------------------------------ BitLinear
def test_bitlinear_forward_is_ternary_times_one_scale():
    torch.manual_seed(0)
    m = BitLinear(16, 8, bias=True).double()
    w = m.quantized_weight()
    scale = m.weight.abs().mean()
    t = w / scale
    assert set(t.round().unique().tolist()) <= {-1.0, 0.0, 1.0}
    torch.testing.assert_close(t, t.round(), rtol=0, atol=1e-12)
    torch.testing.assert_close(t, (m.weight / scale).round().clamp(-1, 1))
    x = 3 * rand(5, 16)
    xn = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-8) * m.norm.weight
    s = 127 / xn.abs().amax(-1, keepdim=True)
    xq = (xn * s).round().clamp(-128, 127)
    assert (xq.abs() <= 127).all() and (xq.abs().amax(-1) == 127).all()
    torch.testing.assert_close(m(x), (xq / s) @ w.T + m.bias, rtol=1e-12, atol=1e-12)


def test_bitlinear_gradient_is_straight_through():
    """The gradients equal those of a float linear layer evaluated at the quantised weight and input."""
    torch.manual_seed(0)
    m = BitLinear(16, 8, bias=True, norm=False).double()
    x = rand(5, 16).requires_grad_()
    r = rand(5, 8)
    (m(x) * r).sum().backward()
    ref = nn.Linear(16, 8).double()
    with torch.no_grad():
        ref.weight.copy_(m.quantized_weight())
        ref.bias.copy_(m.bias)
        s = 127 / x.abs().amax(-1, keepdim=True)
        xq = ((x * s).round().clamp(-128, 127) / s).requires_grad_()
    (ref(xq) * r).sum().backward()
    torch.testing.assert_close(m.weight.grad, ref.weight.grad)
    torch.testing.assert_close(m.bias.grad, ref.bias.grad)
    torch.testing.assert_close(x.grad, xq.grad)


@pytest.mark.parametrize('cfg', [dict(type='deltanet'), dict(type='gated_deltanet'), dict(type='gsa', num_slots=8),
                                 dict(type='abc', num_slots=8), dict(type='transformer')])
def test_any_mixer_can_be_bit(cfg):
    m = build_mixer(dict(cfg, linear_cfg=dict(type='BitLinear')), dim=C, num_heads=H)
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert linears and all(isinstance(mod, BitLinear) for mod in linears)
    x = torch.randn(B, 15, C, requires_grad=True)
    y = run(m, x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(mod.weight.grad is not None and mod.weight.grad.abs().sum() > 0 for mod in linears)


# ------------------------------------------------------------------------------------------------- under routes
DIRECTIONAL = [dict(type='deltanet'), dict(type='gated_deltanet'), dict(type='gsa', num_slots=8, use_short_conv=True),
               dict(type='abc', num_slots=8, use_short_conv=True)]


@pytest.mark.parametrize('cfg', DIRECTIONAL + [dict(type='transformer')])
@pytest.mark.parametrize('route', [None, 'bi'])
def test_packed_sequences_equal_separate_ones(cfg, route):
    """Two images packed into one sequence (cu_seqlens) give what they give apart: short convolutions, the
    recurrences, ABC's running normaliser and softmax attention stop at the boundary, in both directions."""
    check_packed_equals_apart(cfg, route)


@pytest.mark.parametrize('cfg', DIRECTIONAL)
def test_head_groups_keep_their_own_parameters(cfg):
    """multi_head_2d with every group row-major equals no route: each head group convolves with its own heads'
    weights."""
    m = make(cfg)
    x = torch.randn(B, 15, C)
    with torch.no_grad():
        plain = run(m, x)
        grouped = run(m, x, route=build_scan(dict(type='multi_head_2d', directions=('row', 'row'))))
    torch.testing.assert_close(grouped, plain, rtol=1e-5, atol=1e-6)
