"""LinearViT: the old name of IsotropicBackbone with the linear_attn mixer (DeiT sizes, outputs, position
embedding, SimMIM mask token, freezing, mixer options) and the linear_attn mixer itself."""
import pytest
import torch

import vla_mm  # noqa: F401
from vla_mm.models.mixers.base import MixerContext
from vla_mm.registry import MIXERS, MODELS

TINY = dict(embed_dims=32, num_layers=3, num_heads=2, mlp_ratio=2.0)


def build(**kw):
    cfg = dict(type='LinearViT', arch=TINY, img_size=32, patch_size=4)
    cfg.update(kw)
    m = MODELS.build(cfg)
    m.init_weights()
    return m


@pytest.mark.parametrize('arch,params_m', [('tiny', 5.7), ('small', 22.0), ('base', 86.6)])
def test_deit_sizes(arch, params_m):
    """Backbone + a 1000-class linear head has DeiT's parameter count (5.7M / 22M / 86M)."""
    m = MODELS.build(dict(type='LinearViT', arch=arch))
    n = sum(p.numel() for p in m.parameters()) + (m.embed_dims + 1) * 1000
    assert abs(n / 1e6 - params_m) / params_m < 0.02, n


def test_featmap_and_pooled_outputs():
    x = torch.randn(2, 3, 32, 32)
    (f,) = build()(x)
    assert f.shape == (2, 32, 8, 8)
    (p,) = build(out_type='avg_featmap')(x)
    assert p.shape == (2, 32)
    outs = build(out_indices=(0, 1, -1))(x)
    assert [o.shape for o in outs] == [(2, 32, 8, 8)] * 3


def test_other_input_sizes_interpolate_position_embedding():
    m = build()
    (f,) = m(torch.randn(1, 3, 48, 66))  # 66 is padded to 68 -> 17 patches
    assert f.shape == (1, 32, 12, 17)
    assert torch.isfinite(f).all()


def test_checkpoint_from_other_grid_is_resized():
    src = build(img_size=32)
    dst = build(img_size=64)
    dst.load_state_dict(src.state_dict(), strict=True)
    assert dst.pos_embed.shape == (1, 256, 32)
    # the resized embedding is the bicubic interpolation of the source grid, not a re-init
    from vla_mm.models.layers import resize_abs_pos_embed
    assert torch.allclose(dst.pos_embed, resize_abs_pos_embed(src.pos_embed, (8, 8), (16, 16)))


def test_simmim_mask_token_replaces_masked_patches():
    m = build().eval()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 8, 8)
    (a,) = m(x, mask)
    (b,) = m(x)
    assert torch.allclose(a, b, atol=1e-6)  # an all-zero mask changes nothing
    mask[:, :4] = 1
    (c,) = m(x, mask)
    assert not torch.allclose(b, c)
    with pytest.raises(ValueError, match='patches'):
        m(x, torch.zeros(2, 4, 4))


def test_frozen_stages_and_gradients():
    m = build(frozen_stages=2)
    m.train()
    assert not m.patch_embed.projection.weight.requires_grad and not m.pos_embed.requires_grad
    assert not any(p.requires_grad for p in m.layers[1].parameters())
    assert all(p.requires_grad for p in m.layers[2].parameters())
    assert not m.layers[0].training and m.layers[2].training
    (f,) = m(torch.randn(2, 3, 32, 32))
    f.mean().backward()
    assert m.layers[2].mixer.qkv.weight.grad is not None and m.layers[0].mixer.qkv.weight.grad is None


@pytest.mark.parametrize('mixer', [dict(type='linear_attn', feature_map=f) for f in
                                   ('identity', 'elu1', 'relu', 'focused')] +
                         [dict(type='linear_attn', normalize=False), dict(type='linear_attn', lepe=True)])
def test_mixer_options_train(mixer):
    m = build(mixer=mixer, drop_path_rate=0.1)
    (f,) = m(torch.randn(2, 3, 32, 32))
    f.square().mean().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_mixer_matches_plain_attention_formula():
    """The mixer computes elu+1 linear attention: check against the formula written out here."""
    mix = MIXERS.build(dict(type='linear_attn', dim=8, num_heads=2))
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    mix = mix.double()
    q, k, v = mix.qkv(x).reshape(2, 5, 3, 2, 4).unbind(2)
    fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    num = torch.einsum('bnhk,bmhk,bmhv->bnhv', fq, fk, v)
    den = torch.einsum('bnhk,bmhk->bnh', fq, fk)[..., None] + 1e-6
    want = mix.proj((num / den).reshape(2, 5, 8))
    assert torch.allclose(mix(x, MixerContext(hw=(1, 5))), want, atol=1e-10)
    assert mix.qkv(x).is_contiguous()  # q, k, v are strided views of this one projection


def test_bad_arguments():
    with pytest.raises(KeyError, match='arch'):
        MODELS.build(dict(type='LinearViT', arch='huge'))
    with pytest.raises(KeyError, match='missing'):
        MODELS.build(dict(type='LinearViT', arch=dict(embed_dims=32)))
    with pytest.raises(ValueError, match='divisible'):
        MIXERS.build(dict(type='linear_attn', dim=10, num_heads=3))


@pytest.mark.parametrize('lib', ['mmpretrain', 'mmseg', 'mmdet'])
def test_one_backbone_class_for_every_library(lib):
    reg = __import__(f'{lib}.registry', fromlist=['MODELS']).MODELS
    m = reg.build(dict(type='vla_mm.LinearViT', arch=TINY, img_size=32, patch_size=4))
    assert type(m).__name__ == 'LinearViT'


def test_mixer_packed_sequences_equal_separate_runs():
    """``ctx.cu_seqlens`` reaches the op: two packed images attend only within themselves."""
    mix = MIXERS.build(dict(type='linear_attn', dim=8, num_heads=2)).double()
    a, b = torch.randn(1, 5, 8, dtype=torch.float64), torch.randn(1, 3, 8, dtype=torch.float64)
    packed = mix(torch.cat([a, b], 1), MixerContext(hw=(1, 8), cu_seqlens=torch.tensor([0, 5, 8])))
    want = torch.cat([mix(a, MixerContext(hw=(1, 5))), mix(b, MixerContext(hw=(1, 3)))], 1)
    torch.testing.assert_close(packed, want)
    lepe = MIXERS.build(dict(type='linear_attn', dim=8, num_heads=2, lepe=True))
    with pytest.raises(ValueError, match='LePE'):
        lepe(torch.randn(2, 4, 8), MixerContext(hw=(4, 4), ids_keep=torch.zeros(2, 4, dtype=torch.long)))
