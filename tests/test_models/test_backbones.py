"""Backbone bases: IsotropicBackbone (mixer / scan / hybrid attention layers as config choices, old checkpoints,
MAE and SimMIM contexts) and HierarchicalBackbone (pyramid outputs, UperNet on CPU), and the config layout."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import vla_mm  # noqa: F401
from tests.dynamo_compat import contextvars_untraceable
from vla_mm.models.backbones import HierarchicalBackbone, IsotropicBackbone, IsotropicMAE, LinearViT
from vla_mm.models.mixers.base import BaseMixer
from vla_mm.registry import MIXERS, MODELS

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DATA = osp.join(osp.dirname(osp.abspath(__file__)), 'data')


class CumsumMixer(BaseMixer):
    """A directional test mixer: a running sum over the tokens in scan order; records the contexts it saw."""

    directional = True

    def __init__(self, dim, num_heads=1, layer_idx=0):
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim)
        self.seen = []

    @staticmethod
    def core(x, reverse=False):
        return x.flip(1).cumsum(1).flip(1) if reverse else x.cumsum(1)

    def forward(self, x, ctx):
        self.seen.append(ctx)
        B, N, C = x.shape
        return self.proj(self.scan(self.core, [x.view(B, N, 1, C)], ctx).view(B, N, C))


def test_old_linear_vit_checkpoints_load_with_identical_outputs():
    """State dicts and outputs written by LinearViT as it was before the layers became mmcv's (commit f9fe1d7;
    tests/test_models/data/make_old_linear_vit.py): patch and conv stems, layer scale, LePE, SimMIM masks and an
    input of another size. They load strictly into LinearViT and IsotropicBackbone and give the same outputs."""
    data = torch.load(osp.join(DATA, 'old_linear_vit.pth'), weights_only=True)
    for case in data['cases']:
        kwargs = dict(case['kwargs'])
        for model in (LinearViT(**kwargs), IsotropicBackbone(
                layer_scale_init_value=kwargs.pop('layer_scale_init', 0.0), **kwargs)):
            model.load_state_dict(case['state_dict'], strict=True)
            model.eval()
            with torch.no_grad():
                for got, want in ((model(case['x']), case['outs']), (model(case['x'], case['mask']), case['outs_mask']),
                                  (model(case['x_other']), case['outs_other'])):
                    assert len(got) == len(want)
                    for g, w in zip(got, want):
                        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_out_types_and_indices(build_backbone, images):
    (f, ) = build_backbone()(images)
    assert f.shape == (2, 32, 8, 8) and f.is_contiguous()
    (p, ) = build_backbone(out_type='avg_featmap')(images)
    assert p.shape == (2, 32)
    (t, ) = build_backbone(out_type='raw')(images)
    assert t.shape == (2, 64, 32) and torch.allclose(t.mean(1), p, atol=1e-6)
    outs = build_backbone(out_indices=(1, 0, -1))(images)
    assert len(outs) == 2  # sorted, duplicates (1 == -1) once
    with pytest.raises(ValueError, match='out_type'):
        build_backbone(out_type='cls_token')
    with pytest.raises(IndexError, match='out_indices'):
        build_backbone(out_indices=(5, ))


@pytest.mark.parametrize('norm', ['LN', 'FusedLN'])
def test_backbone_compiles_to_one_graph(build_backbone, images, norm):
    """The whole backbone (blocks, op calls, norms, drop path) is one dynamo graph, also where dynamo cannot trace a
    ContextVar (torch < 2.13, the GPU machine's 2.11: an options read at each op call broke the compiled model
    into 5 graphs per block, its train step host-bound at 74 ms against 40 eager)."""
    m = build_backbone(mixer=dict(type='linear_attn'), norm_cfg=dict(type=norm, eps=1e-6), drop_path_rate=0.1,
                       out_type='avg_featmap')
    torch._dynamo.reset()
    with contextvars_untraceable():
        explained = torch._dynamo.explain(m)(images)
    torch._dynamo.reset()
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_hybrid_attention_layers(build_backbone, images):
    m = build_backbone(arch=dict(embed_dims=32, num_layers=4, num_heads=2), attn_layers=(1, -1),
                       attn_mixer=dict(type='linear_attn', feature_map='relu'))
    assert m.attn_layers == [1, 3]
    assert [layer.mixer.feature_map for layer in m.layers] == ['elu1', 'relu', 'elu1', 'relu']
    assert m(images)[0].shape == (2, 32, 8, 8)
    if 'transformer' in MIXERS.module_dict:  # the default attention mixer of issue 17's hybrids
        m = build_backbone(attn_layers=(0, ))
        assert type(m.layers[0].mixer) is MIXERS.get('transformer') and torch.isfinite(m(images)[0]).all()


def test_scan_routes_reach_each_block(build_backbone, images):
    plain = build_backbone(mixer=dict(type=CumsumMixer))
    for scan in ('flip', dict(type='random', seed=3), dict(type='bi', merge='gate')):
        m = build_backbone(mixer=dict(type=CumsumMixer), scan=scan)
        m.load_state_dict(plain.state_dict(), strict=False)
        (y, ) = m(images)
        for i, layer in enumerate(m.layers):
            ctx = layer.mixer.seen[-1]
            assert ctx.route is m.scans[i] and ctx.layer_idx == i and ctx.hw == (8, 8)
        assert not torch.allclose(y, plain(images)[0]), scan  # a directional mixer sees the route
    gated = build_backbone(mixer=dict(type=CumsumMixer), scan=dict(type='bi', merge='gate'))
    assert gated.scans[0].gate.shape == (32, ) and gated.scans[0].gate is not gated.scans[1].gate
    # the random permutation is part of the checkpoint
    a = build_backbone(mixer=dict(type=CumsumMixer), scan=dict(type='random', seed=1))
    b = build_backbone(mixer=dict(type=CumsumMixer), scan=dict(type='random', seed=2))
    assert 'scans.0.perm' in a.state_dict()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(images)[0], b(images)[0])
    assert build_backbone(scan='uni').scans is None


def test_mae_and_simmim_contexts(tiny_arch, images):
    torch.manual_seed(0)
    mae = IsotropicMAE(arch=tiny_arch, img_size=32, patch_size=4, mixer=dict(type=CumsumMixer), scan='flip',
                       mask_ratio=0.75)
    latent, mask, ids_restore = mae(images)
    ctx = mae.layers[0].mixer.seen[-1]
    assert latent.shape == (2, 17, 32) and ctx.ids_keep.shape == (2, 16) and ctx.hw == (8, 8)
    kept = torch.argsort(ids_restore, dim=1)[:, :16]
    assert torch.equal(ctx.ids_keep, kept) and torch.all(mask.gather(1, kept) == 0)
    simmim = IsotropicBackbone(arch=tiny_arch, img_size=32, patch_size=4, mixer=dict(type=CumsumMixer))
    m = torch.rand(2, 8, 8) > 0.5
    simmim(images, m.float())
    assert torch.equal(simmim.layers[1].mixer.seen[-1].mask, m.flatten(1))


def test_hierarchical_pyramid_outputs():
    m = HierarchicalBackbone(arch='nano', img_size=64, mixer=[dict(type='linear_attn')] * 3 + [
        dict(type='linear_attn', feature_map='relu')], attn_layers=(-1, ),
        attn_mixer=dict(type='linear_attn', feature_map='identity'))
    m.init_weights()
    x = torch.randn(2, 3, 64, 96)
    outs = m(x)
    assert [o.shape for o in outs] == [(2, 32, 16, 24), (2, 64, 8, 12), (2, 128, 4, 6), (2, 256, 2, 3)]
    assert all(o.is_contiguous() for o in outs)
    assert [b.mixer.feature_map for b in m.stages[3]] == ['identity']  # the last block: the attention mixer
    assert m.stages[2][0].mixer.num_heads == 4 and m.stages[0][0].mixer.num_heads == 1
    outs[-1].mean().backward()
    assert m.patch_embed.projection.weight.grad is not None
    sub = HierarchicalBackbone(arch='nano', out_indices=(1, 3), frozen_stages=2)
    sub.train()
    assert [o.shape[1] for o in sub(x)] == [64, 256]
    assert not any(p.requires_grad for p in sub.stages[1].parameters())
    assert not any(p.requires_grad for p in sub.downsamples[0].parameters())
    assert all(p.requires_grad for p in sub.stages[2].parameters()) and not sub.stages[0].training
    with pytest.raises(ValueError, match='one per stage'):
        HierarchicalBackbone(arch='nano', mixer=[dict(type='linear_attn')] * 2)


def test_backbones_give_mixers_their_depth():
    """Both backbones fill ``num_layers`` in (global block index and total depth): HGRN's lower bound is on from
    the second block without the config naming the depth; a config's own value wins."""
    iso = IsotropicBackbone(arch=dict(embed_dims=32, num_layers=3, num_heads=2), img_size=32, patch_size=8,
                            mixer=dict(type='hgrn'))
    assert [b.mixer.lower_bound is not None for b in iso.layers] == [False, True, True]
    hier = HierarchicalBackbone(arch='nano', img_size=64, mixer=dict(type='rwkv6'))
    blocks = [b for stage in hier.stages for b in stage]
    assert [(b.mixer.layer_idx, b.mixer.num_layers) for b in blocks] == [(i, len(blocks)) for i in range(len(blocks))]
    own = IsotropicBackbone(arch=dict(embed_dims=32, num_layers=3, num_heads=2), img_size=32, patch_size=8,
                            mixer=dict(type='rwkv6', num_layers=12))
    assert all(b.mixer.num_layers == 12 for b in own.layers)


def test_pyramid_upernet_config_runs_on_cpu():
    """The example pyramid's UperNet config (shrunk to the nano sizes) through mmseg's EncoderDecoder: pyramid
    outputs -> UPerHead logits at stride 4, and a loss with gradients."""
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS as SEG_MODELS
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    cfg = Config.fromfile(osp.join(ROOT, 'configs/linear_attn_pyramid/'
                                         'upernet_linear-attn-pyramid-t_1xb8-4k_shapes-128x128.py'))
    cfg.model.backbone.arch = 'nano'
    cfg.model.decode_head.update(in_channels=[32, 64, 128, 256], channels=16, pool_scales=(1, 2))
    cfg.model.auxiliary_head.update(in_channels=128, channels=8)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = SEG_MODELS.build(cfg.model)
    model.init_weights()
    x = torch.randn(2, 3, 64, 64)
    assert model.decode_head(model.extract_feat(x)).shape == (2, 7, 16, 16)
    samples = [SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 7, (1, 64, 64))),
                             metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64))) for _ in range(2)]
    losses = model.loss(x, samples)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert model.backbone.stages[0][0].mixer.qkv.weight.grad.abs().sum() > 0


def test_configs_parse_and_name_registered_modules():
    """Every config parses; the new layout's backbones name registered types and mixers; old config paths resolve
    to the same backbone settings as their new names."""
    names = sorted(n for n in glob.glob(osp.join(ROOT, 'configs', '*', '*.py')) if '_base_' not in n)
    assert len(names) >= 30
    for name in names:
        cfg = Config.fromfile(name, import_custom_modules=False)
        backbone = cfg.model.backbone
        assert MODELS.get(backbone.type.replace('vla_mm.', '')) is not None, name
        mixer = backbone.get('mixer', dict(type='linear_attn'))
        assert MIXERS.get(mixer['type']) is not None, name
    old = Config.fromfile(osp.join(ROOT, 'configs/linear_vit/linear-vit-t_shapes-cls.py'))
    new = Config.fromfile(osp.join(ROOT, 'configs/linear_attn/linear-attn-t_1xb64_shapes-48px.py'))
    assert old.model.to_dict() == new.model.to_dict()
    assert new.model.backbone.mixer == dict(type='linear_attn', feature_map='elu1', lepe=True)


def test_a_new_mixer_is_a_family_base_and_two_lines(tmp_path):
    """A config for another mixer: its family base (one line) joined to a task base."""
    (tmp_path / 'relu-attn-t.py').write_text(
        "backbone = dict(type='vla_mm.IsotropicBackbone', arch='tiny', mixer=dict(type='linear_attn', "
        "feature_map='relu'))\n")
    base = osp.join(ROOT, 'configs/_base_/models')
    (tmp_path / 'leaf.py').write_text(
        f"_base_ = ['./relu-attn-t.py', {osp.join(base, 'upernet_isotropic.py')!r}]\n"
        "model = dict(backbone=dict(_base_.backbone, arch=dict(embed_dims=32, num_layers=4, num_heads=2)),\n"
        "             neck=dict(in_channels=32))\n")
    cfg = Config.fromfile(str(tmp_path / 'leaf.py'))
    assert cfg.model.type == 'EncoderDecoder' and cfg.model.backbone.out_indices == (3, 5, 7, 11)
    assert cfg.model.backbone.mixer.feature_map == 'relu'
    cfg.model.backbone.out_indices = (0, 1, 2, 3)
    bb = MODELS.build(dict(cfg.model.backbone, img_size=64))
    assert len(bb(torch.randn(1, 3, 64, 64))) == 4
