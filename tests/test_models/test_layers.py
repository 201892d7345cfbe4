"""Shared layers: the block (formula, norms, GLU, layer scale, drop path, checkpointing, copies), stems, norms,
position embeddings, token/map views."""
import collections

import pytest
import torch
import torch.nn.functional as F

import vla_mm.models.mixers.linear_attn as linear_attn_mod
from vla_mm.models.layers import (ConvStem, MixerBlock, build_2d_sincos_pos_embed, build_norm, build_stem, map_view,
                                  resize_abs_pos_embed, tokens_to_map)
from vla_mm.models.mixers.base import BaseMixer, MixerContext

DIM, HW = 16, (3, 5)


class ProjMixer(BaseMixer):
    """A copy-free test mixer: a linear map of the tokens plus their mean; records the context it was given."""

    def __init__(self, dim, num_heads=1, layer_idx=0):
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim)
        self.num_heads, self.layer_idx, self.seen = num_heads, layer_idx, []

    def forward(self, x, ctx):
        self.seen.append(ctx)
        return self.proj(x) + x.mean(dim=1, keepdim=True)


def make_block(**kw):
    torch.manual_seed(0)
    block = MixerBlock(DIM, dict(type=ProjMixer), num_heads=2, layer_idx=3, mlp_ratio=2.0, **kw).double()
    with torch.no_grad():  # norms and layer scales away from 1 / 0, so a wrong wiring shows
        for name, p in block.named_parameters():
            if 'norm' in name or 'gamma' in name:
                p.add_(0.3 * torch.randn_like(p))
    return block


@pytest.mark.parametrize('ffn_type', ['mlp', 'glu'])
@pytest.mark.parametrize('norm', ['LN', 'RMSNorm', 'FusedLN', 'FusedRMSNorm'])
@pytest.mark.parametrize('layer_scale', [0.0, 0.5])
def test_block_is_the_prenorm_residual_formula(ffn_type, norm, layer_scale):
    block = make_block(ffn_type=ffn_type, norm_cfg=dict(type=norm, eps=1e-6), layer_scale_init_value=layer_scale)
    x = torch.randn(2, HW[0] * HW[1], DIM, dtype=torch.float64)

    def normed(t, mod):
        if norm.endswith('LN'):
            return F.layer_norm(t, (DIM, ), mod.weight, mod.bias, 1e-6)
        return t * torch.rsqrt(t.square().mean(-1, keepdim=True) + 1e-6) * mod.weight

    g1 = block.gamma1.weight if layer_scale else 1.0
    y = x + g1 * block.mixer(normed(x, block.norm1), None)
    h = normed(y, block.norm2)
    if ffn_type == 'mlp':
        f = block.ffn.layers[1](F.gelu(block.ffn.layers[0][0](h)))
    else:
        a, b = block.ffn.w12(h).chunk(2, dim=-1)
        f = block.ffn.w3(F.silu(a) * b)
    want = y + (block.ffn.gamma2.weight if layer_scale else 1.0) * f
    torch.testing.assert_close(block(x, MixerContext(hw=HW)), want, rtol=1e-12, atol=1e-12)
    assert isinstance(block.norm1, torch.nn.LayerNorm if norm.endswith('LN') else torch.nn.RMSNorm)
    assert block.mixer.num_heads == 2 and block.mixer.layer_idx == 3  # build_mixer filled what the mixer takes


def test_block_passes_the_context_and_drop_path_only_trains():
    block = make_block(drop_path_rate=0.5)
    x = torch.randn(64, 4, DIM, dtype=torch.float64)
    ctx = MixerContext(hw=(2, 2), layer_idx=3)
    block.eval()
    ref = block(x, ctx)
    assert block.mixer.seen[-1] is ctx
    assert torch.equal(block(x, ctx), ref)  # eval: deterministic, no drop
    block.train()
    torch.manual_seed(1)
    y = block(x, ctx)
    dropped = [(y[i] - x[i]).abs().max() < 1e-12 for i in range(64)]  # both branches dropped: identity
    assert 0 < sum(dropped) < 64 and not torch.allclose(y, ref)


def test_activation_checkpointing_gives_the_same_values_and_gradients():
    x = torch.randn(2, 15, DIM, dtype=torch.float64, requires_grad=True)
    outs = []
    for with_cp in (False, True):
        block = make_block(with_cp=with_cp, drop_path_rate=0.3).train()
        torch.manual_seed(1)  # the recomputation replays the same drop-path draw
        y = block(x, MixerContext(hw=HW))
        outs.append((y.detach(), torch.autograd.grad(y.square().sum(), [x, *block.parameters()])))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=0, atol=0)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_old_block_parameter_names_load():
    """A state dict with the names of the block before mmcv's FFN / LayerScale (mlp.fc1/fc2, gamma1/2 tensors)."""
    block = make_block(layer_scale_init_value=0.5)
    new = {k: v.clone() for k, v in block.state_dict().items()}
    old = {k.replace('ffn.layers.0.0.', 'mlp.fc1.').replace('ffn.layers.1.', 'mlp.fc2.')
           .replace('gamma1.weight', 'gamma1').replace('ffn.gamma2.weight', 'gamma2'): v.clone() * 2
           for k, v in new.items()}
    assert 'mlp.fc1.weight' in old and 'gamma2' in old
    block.load_state_dict(old, strict=True)
    for k, v in block.state_dict().items():
        torch.testing.assert_close(v, new[k] * 2)


def _copy_free_op(q, k, v, **kwargs):
    return q * k + v  # elementwise on the strided q/k/v views: a fresh contiguous [B, N, H, D]


def _copy_free_packed_op(qkv, **kwargs):
    return _copy_free_op(*qkv.unbind(2))


def test_block_and_backbone_make_no_copies(count_copies, build_backbone, images, monkeypatch):
    """One train step (forward + backward): the blocks make no copy. The backbone makes three: the stem's output
    gradient (the tokens are a transposed view of the conv output), the returned NCHW map, and the final norm's
    gradient coming back from that map (and the mask token's zero gradient, a [1, 1, C] parameter). The LePE
    branch of linear_attn adds one copy of v per block (and of its conv weight). (With the
    old layout the residual stream was a transposed view and every LayerNorm copied its input and its gradient:
    4 copies a block.)"""
    monkeypatch.setattr(linear_attn_mod, 'linear_attn', _copy_free_op)  # the op's own internals are not ours
    monkeypatch.setattr(linear_attn_mod, 'linear_attn_qkv', _copy_free_packed_op)
    x = torch.randn(2, 64, 32, requires_grad=True)
    for ffn_type in ('mlp', 'glu'):
        block = MixerBlock(32, dict(type='linear_attn'), num_heads=2, ffn_type=ffn_type, drop_path_rate=0.1,
                           layer_scale_init_value=0.1).train()
        assert count_copies(lambda: block(x, MixerContext(hw=(8, 8))).sum().backward()) == {}, ffn_type

    def step(model):
        return lambda: sum(o.sum() for o in model(images)).backward()

    model = build_backbone(arch=dict(embed_dims=32, num_layers=4, num_heads=2), drop_path_rate=0.1).train()
    copies = count_copies(step(model))
    expected = {((2, 32, 8, 8), 'aten::convolution_backward'): 1, ((2, 32, 8, 8), ''): 1,
                ((2, 64, 32), 'aten::native_layer_norm_backward'): 1,
                ((1, 1, 32), 'torch::autograd::AccumulateGrad'): 1}  # the unused mask token's zero gradient
    assert copies == expected, copies
    model = build_backbone(arch=dict(embed_dims=32, num_layers=4, num_heads=2), out_type='raw').train()
    assert sum(count_copies(step(model)).values()) == 3
    model = build_backbone(arch=dict(embed_dims=32, num_layers=4, num_heads=2),
                           mixer=dict(type='linear_attn', lepe=True)).train()
    copies = count_copies(step(model))
    lepe = {((2, 32, 8, 8), ''): 4,  # the conv's dense (channels-last) input, once a block
            ((32, 1, 3, 3), 'aten::convolution_backward'): 4}  # its weight to channels-last in the backward
    assert copies == collections.Counter(expected) + collections.Counter(lepe), copies


def _plain_and_fused_blocks(norm):
    """A block with torch's norm, the same block (same weights) with the fused ``norm``, and an input."""
    plain = make_block(norm_cfg=dict(type='LN' if norm == 'FusedLN' else 'RMSNorm', eps=1e-6)).float()
    fused = make_block(norm_cfg=dict(type=norm, eps=1e-6, min_rows=0)).float()  # the op even at 30 rows
    fused.load_state_dict(plain.state_dict())
    return plain, fused, torch.randn(2, HW[0] * HW[1], DIM)


@pytest.mark.parametrize('norm', ['FusedLN', 'FusedRMSNorm'])
def test_fused_norms_through_the_kernel_equal_torchs(norm):
    """A block with the fused norm on the Triton path (interpreter) = the same block with torch's norm: output
    and every parameter gradient; under autocast the norm writes the autocast dtype on either path."""
    from vla_mm.ops.common import kernel_options
    plain, fused, x = _plain_and_fused_blocks(norm)
    outs = []
    for block, backend in ((plain, 'auto'), (fused, 'triton')):
        with kernel_options(backend=backend):
            y = block(x, MixerContext(hw=HW))
            y.square().sum().backward()
        outs.append([y] + [p.grad for p in block.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for backend in ('auto', 'triton'):
        with kernel_options(backend=backend), torch.autocast('cpu', dtype=torch.bfloat16):
            assert fused.norm1(x).dtype == torch.bfloat16
        assert fused.norm1(x).dtype == torch.float32


@pytest.mark.parametrize('norm', ['FusedLN', 'FusedRMSNorm'])
def test_fused_norm_takes_the_residual_add_in_its_pass(norm, monkeypatch):
    """With a fused norm the block's first residual add runs inside norm2's op (``add_layer_norm``, once a block,
    Triton path in the interpreter): under bf16 autocast (fp32 stream, bf16 branch) the block equals the same block
    with torch's norm and a separate add, output and every parameter gradient (bf16 tolerance)."""
    from vla_mm.models.layers import norm as norm_mod
    from vla_mm.ops.common import kernel_options
    calls = []
    real = norm_mod.add_layer_norm
    monkeypatch.setattr(norm_mod, 'add_layer_norm', lambda *a, **k: calls.append(a[0].dtype) or real(*a, **k))
    plain, fused, x = _plain_and_fused_blocks(norm)
    outs = []
    for block, backend in ((plain, 'auto'), (fused, 'triton')):
        with kernel_options(backend=backend), torch.autocast('cpu', dtype=torch.bfloat16):
            y = block(x, MixerContext(hw=HW))
        y.float().square().sum().backward()
        outs.append([y.float()] + [p.grad for p in block.parameters()])
    assert calls == [torch.bfloat16]  # the mixer branch in bf16, the stream in fp32
    names = ['y'] + [n for n, _ in plain.named_parameters()]
    errs = {n: ((a - b).norm() / b.norm()).item() for n, a, b in zip(names, *outs)}
    assert max(errs.values()) < 2e-2, errs


@pytest.mark.parametrize('norm', ['FusedLN', 'FusedRMSNorm'])
def test_fused_norms_leave_small_inputs_to_torchs_norm(norm, monkeypatch):
    """Below ``min_rows`` rows the fused norms run torch's (same values, autocast dtype), from it the op; the
    block's add + norm the same."""
    from vla_mm.models.layers import norm as norm_mod
    from vla_mm.ops.common import kernel_options
    calls = []
    for name in ('layer_norm', 'add_layer_norm'):
        real = getattr(norm_mod, name)
        monkeypatch.setattr(norm_mod, name,
                            lambda *a, _n=name, _r=real, **k: calls.append((_n, a[0].shape[0])) or _r(*a, **k))
    assert build_norm(dict(type=norm), 8).min_rows == norm_mod.MIN_ROWS
    mod = build_norm(dict(type=norm, eps=1e-6, min_rows=6), DIM).float()
    small, large = torch.randn(1, 5, DIM), torch.randn(2, 3, DIM)  # 5 and 6 rows
    with kernel_options(backend='triton'), torch.autocast('cpu', dtype=torch.bfloat16):
        ys = [mod(small), mod(large), mod.add_forward(small, small)[0], mod.add_forward(large, large)[0]]
    assert calls == [('layer_norm', 2), ('add_layer_norm', 2)]
    assert all(y.dtype == torch.bfloat16 for y in ys)
    plain = torch.nn.LayerNorm(DIM, eps=1e-6) if norm == 'FusedLN' else torch.nn.RMSNorm(DIM, eps=1e-6)
    plain.load_state_dict(mod.state_dict())
    for y, x in zip(ys, (small, large, 2 * small, 2 * large)):
        torch.testing.assert_close(y.float(), plain(x), rtol=1e-2, atol=1e-2)


def test_norms_by_config():
    assert isinstance(build_norm(dict(type='LN', eps=1e-6), 8), torch.nn.LayerNorm)
    fused = build_norm(dict(type='FusedLN', eps=1e-6), 8)
    assert type(fused).__name__ == 'FusedLayerNorm' and fused.eps == 1e-6
    rms = build_norm(dict(type='RMSNorm', eps=1e-6), 8)
    assert isinstance(rms, torch.nn.RMSNorm) and rms.eps == 1e-6
    gn = build_norm(dict(type='GN', num_groups=2), 8)
    assert isinstance(gn, torch.nn.GroupNorm) and gn.num_groups == 2
    with pytest.raises(KeyError, match='not registered'):
        build_norm(dict(type='NoSuchNorm'), 8)


def test_stems_pad_and_check():
    x = torch.randn(1, 3, 30, 21)
    for stem in ('patch', dict(type='conv', convs_per_stage=2)):
        tokens, hw = build_stem(stem, 3, 8, 4)(x)
        assert hw == (8, 6) and tokens.shape == (1, 48, 8)  # padded to 32 x 24
    with pytest.raises(ValueError, match='power-of-two'):
        ConvStem(3, 8, patch_size=6)
    with pytest.raises(KeyError, match='stem'):
        build_stem('nope', 3, 8, 4)


def test_position_embeddings():
    h, w, d = 3, 5, 8
    emb = build_2d_sincos_pos_embed((h, w), d)[0]
    omega = 1.0 / 10000 ** (torch.arange(d // 4) / (d // 4))
    for i in range(h):
        for j in range(w):  # first half codes the row, second the column, per row-major token
            r, c = i * omega, j * omega
            want = torch.cat([r.sin(), r.cos(), c.sin(), c.cos()])
            torch.testing.assert_close(emb[i * w + j], want)
    pos = torch.randn(1, 12, 4)
    assert resize_abs_pos_embed(pos, (3, 4), (3, 4)) is pos
    big = resize_abs_pos_embed(pos, (3, 4), (6, 8))
    want = F.interpolate(pos.reshape(1, 3, 4, 4).permute(0, 3, 1, 2), size=(6, 8), mode='bicubic',
                         align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(big, want)


def test_token_map_views():
    x = torch.randn(2, 15, 4)
    m = map_view(x, HW)
    assert m.data_ptr() == x.data_ptr() and m.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(m[:, :, 1, 2], x[:, 1 * 5 + 2])
    nchw = tokens_to_map(x, HW)
    assert nchw.is_contiguous() and torch.equal(nchw, m)


@pytest.mark.parametrize('gated', [False, True])
def test_mixer_output_norm_through_the_kernel_equals_torchs(gated):
    """The mixers' per-head output norm (RMSNorm times swish(gate)) on the fused Triton op (interpreter) = torch's
    ops: output and the gradients of x, gate and weight, in the 16-bit dtype the mixers hand it."""
    from vla_mm.models.mixers._common import GatedRMSNorm
    from vla_mm.ops.common import kernel_options
    norm = GatedRMSNorm(16)
    with torch.no_grad():
        norm.weight.add_(0.3 * torch.randn(16))
    x = torch.randn(2, 5, 3, 16).bfloat16().requires_grad_()
    gate = torch.randn(2, 5, 3, 16).bfloat16().requires_grad_() if gated else None
    outs = []
    for backend in ('auto', 'triton'):
        with kernel_options(backend=backend):
            y = norm(x, gate)
        dy = torch.linspace(-1, 1, y.numel()).reshape(y.shape).bfloat16()
        leaves = [x, norm.weight] + ([gate] if gated else [])
        outs.append([y, *torch.autograd.grad(y, leaves, dy)])
    assert outs[1][0].dtype == torch.bfloat16
    for a, b in zip(*outs):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
