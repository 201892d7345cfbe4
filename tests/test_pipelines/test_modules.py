"""Neck, MAE backbone, layer-wise lr decay and initialisation from a classification checkpoint (in-process)."""
import pytest
import torch
from mmengine.config import Config

import vla_mm  # noqa: F401
from vla_mm.models.backbones import LinearViT, LinearViTMAE
from vla_mm.models.layers import resize_abs_pos_embed
from vla_mm.models.necks import SimpleFeaturePyramid

from . import tiny

ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, mlp_ratio=2.0)


@pytest.mark.parametrize('patch', [4, 8, 16])
def test_simple_fpn_strides_4_to_32(patch):
    neck = SimpleFeaturePyramid(in_channels=32, out_channels=16, patch_size=patch)
    neck.init_weights()
    H, W = 128, 96  # not square, not the training size
    bb = LinearViT(arch=ARCH, img_size=64, patch_size=patch, out_indices=(0, 1))
    feats = bb(torch.randn(1, 3, H, W))
    outs = neck(feats[-1:])  # ViTDet: last map only
    assert [o.shape[-2:] for o in outs] == [(H // s, W // s) for s in (4, 8, 16, 32)]
    assert all(o.shape[1] == 16 for o in outs)
    with pytest.raises(ValueError, match='per-depth taps'):
        SimpleFeaturePyramid(32, 16, patch, use_last_only=False)(feats)
    taps = SimpleFeaturePyramid(32, 16, patch)(feats * 2)  # 4 taps
    assert [o.shape[-2:] for o in taps] == [(H // s, W // s) for s in (4, 8, 16, 32)]


def test_mae_backbone_drops_tokens_and_restores_order():
    torch.manual_seed(0)
    bb = LinearViTMAE(arch=ARCH, img_size=32, patch_size=4, mask_ratio=0.75)
    bb.init_weights()
    assert not bb.pos_embed.requires_grad
    latent, mask, ids_restore = bb(torch.randn(3, 3, 32, 32))
    assert latent.shape == (3, 1 + 16, 32)  # summary token + 25% of 64 patches
    assert mask.shape == (3, 64) and torch.all(mask.sum(1) == 48)
    assert torch.equal(ids_restore.sort(1).values, torch.arange(64).expand(3, -1))
    feats = bb(torch.randn(2, 3, 32, 32), mask=None)
    assert feats[0].shape == (2, 32, 8, 8)
    # same parameters as the plain backbone: a MAE checkpoint loads into LinearViT strictly
    LinearViT(arch=ARCH, img_size=32, patch_size=4).load_state_dict(bb.state_dict(), strict=True)
    with pytest.raises(ValueError, match='LePE'):
        LinearViTMAE(arch=ARCH, img_size=32, patch_size=4, mixer=dict(type='linear_attn', lepe=True))(
            torch.randn(1, 3, 32, 32))


def test_layer_wise_lr_decay_param_groups(tmp_path):
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DefaultScope, MODELS
    cfg = Config.fromfile(tiny.finetune_config(tmp_path, None))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
        ow = build_optim_wrapper(model, cfg.optim_wrapper)
    lrs = {}
    for g in ow.optimizer.param_groups:
        lrs.setdefault(g['layer_id'], g['lr'])
    base, rate = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.paramwise_cfg.layer_decay_rate
    n = 2 + 2  # blocks + embeddings + head
    assert sorted(lrs) == [0, 1, 2, 3]
    for layer_id, lr in lrs.items():
        assert lr == pytest.approx(base * rate ** (n - 1 - layer_id))


def test_init_from_classification_checkpoint_uses_weights_and_resizes_pos_embed(tmp_path):
    """Dense model (64 px, patch 4: 16x16 grid) from a 32 px classification checkpoint (8x8 grid)."""
    from mmengine.registry import DefaultScope, MODELS
    from mmengine.runner.checkpoint import _load_checkpoint_with_prefix
    cls_cfg = Config.fromfile(tiny.finetune_config(tmp_path, None))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        cls_model = MODELS.build(cls_cfg.model)
    cls_model.init_weights()
    with torch.no_grad():  # "trained" weights: every tensor differs from any initialisation
        for p in cls_model.parameters():
            p.add_(torch.randn_like(p))
    ckpt = tmp_path / 'cls.pth'
    torch.save(dict(state_dict=cls_model.state_dict(), meta=dict()), ckpt)
    src = {k[len('backbone.'):]: v for k, v in cls_model.state_dict().items() if k.startswith('backbone.')}

    seg = Config.fromfile(tiny.seg_config(tmp_path, backbone_extra=(
        f"init_cfg=dict(type='Pretrained', checkpoint={str(ckpt)!r}, prefix='backbone.')")))
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(seg.model)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.init_weights()
    got = model.backbone.state_dict()
    assert set(got) == set(src)
    for k, v in src.items():
        if k == 'pos_embed':
            assert got[k].shape == (1, 256, 32) and v.shape == (1, 64, 32)
            assert torch.allclose(got[k], resize_abs_pos_embed(v, (8, 8), (16, 16)))
        else:
            assert torch.equal(got[k], v), k
        assert not torch.equal(got[k], before[k]), f'{k} unchanged by init: the checkpoint was not used'
    # the same checkpoint through a strict-reporting load: nothing missing, nothing unexpected
    sd = _load_checkpoint_with_prefix('backbone.', str(ckpt), map_location='cpu')
    fresh = LinearViT(arch=ARCH, img_size=64, patch_size=4, out_indices=(1, ))
    result = fresh.load_state_dict(sd, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    # a wrong prefix is an error, not a silent skip
    with pytest.raises(AssertionError, match='not in the pretrained model'):
        _load_checkpoint_with_prefix('encoder.', str(ckpt), map_location='cpu')


def test_mae_encoder_through_triton_kernels_matches_reference(monkeypatch):
    """MAE's shortened sequences (16 of 64 tokens, and an odd 7 of 25) through the Triton kernels (interpreter
    on CPU) give the reference's outputs and gradients."""
    import os
    if os.environ.get('TRITON_INTERPRET') != '1' and not torch.cuda.is_available():
        pytest.skip('needs the Triton interpreter (set by tests/conftest.py) or a GPU')
    import vla_mm.models.mixers.linear_attn as mixer_mod
    from vla_mm.ops.linear_attn import linear_attn_reference, linear_attn_triton
    for img, ratio in ((32, 0.75), (20, 0.72)):
        torch.manual_seed(0)
        bb = LinearViTMAE(arch=ARCH, img_size=img, patch_size=4, mask_ratio=ratio)
        bb.init_weights()
        x = torch.randn(2, 3, img, img)
        outs = []
        for op in (linear_attn_reference, linear_attn_triton):
            monkeypatch.setattr(mixer_mod, 'linear_attn', op)
            torch.manual_seed(1)  # same random masking
            bb.zero_grad()
            latent, mask, _ = bb(x)
            latent.square().mean().backward()
            outs.append((latent.detach(), bb.layers[0].mixer.qkv.weight.grad.clone()))
        keep = int((img // 4) ** 2 * (1 - ratio))
        assert outs[0][0].shape == (2, 1 + keep, 32)
        assert torch.allclose(outs[0][0], outs[1][0], atol=1e-4, rtol=1e-4)
        assert torch.allclose(outs[0][1], outs[1][1], atol=1e-4, rtol=1e-4)
