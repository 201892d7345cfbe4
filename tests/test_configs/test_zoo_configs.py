"""The config zoo (issue 17): every config under ``configs/`` loads and names registered types; each mixer has its
family bases and task configs; a swapped task config differs from its linear_attn counterpart in the mixer only
(and the shapes job of the mixers in SHAPES_LR in its peak lr);
a hybrid config from its pure one in ``attn_layers`` only; the backbones of the shapes configs build and run; hybrid
SimMIM trains a step; ``tools/train.py`` runs two iterations of each mixer's shapes classification config."""
import copy
import functools
import glob
import math
import os
import os.path as osp
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(ROOT, 'configs')
ALL = sorted(p for p in glob.glob(osp.join(CONFIGS, '**', '*.py'), recursive=True) if '_base_' not in p)
# registry name -> name in file names; each has configs/<name>/ and configs/_base_/models/isotropic/<hy>-{t,s,b}.py
MIXERS = {'abc': 'abc', 'bitnet': 'bitnet', 'deltanet': 'deltanet', 'gated_deltanet': 'gated-deltanet', 'gla': 'gla',
          'gsa': 'gsa', 'hgrn': 'hgrn', 'hgrn2': 'hgrn2', 'lightnet': 'lightnet', 'linear_attn': 'linear-attn',
          'retnet': 'retnet', 'rwkv6': 'rwkv6', 'transformer': 'transformer'}
ROUTED = ('gla', 'gated_deltanet', 'rwkv6')
LINEAR = [n for n in MIXERS if n != 'transformer']   # transformer is all softmax attention already
# task configs of every mixer but linear_attn: (stem, linear_attn counterpart or None)
TASKS = {
    '{hy}-t_8xb128_in1k': None, '{hy}-s_8xb128_in1k': None, '{hy}-b_8xb128_in1k': None,
    '{hy}-t_1xb64_shapes-48px': 'linear-attn-t_1xb64_shapes-48px',
    'simmim_{hy}-t_1xb64-40e_shapes-32px': 'simmim_linear-attn-t_1xb64-40e_shapes-32px',
    'simmim_{hy}-t_8xb256-amp-coslr-100e_in1k-192px': 'simmim_linear-attn-t_8xb256-amp-coslr-100e_in1k-192px',
    'upernet_{hy}-t_1xb8-4k_shapes-128x128': 'upernet_linear-attn-t_1xb8-4k_shapes-128x128',
    'upernet_{hy}-t_4xb4-160k_ade20k-512x512': 'upernet_linear-attn-t_4xb4-160k_ade20k-512x512',
    'mask-rcnn_{hy}-t_sfp-fpn_1xb8-48e_shapes-128px': 'mask-rcnn_linear-attn-t_sfp-fpn_1xb8-48e_shapes-128px',
    'mask-rcnn_{hy}-t_sfp-fpn_1x_coco': 'mask-rcnn_linear-attn-t_sfp-fpn_1x_coco',
}
# the shapes classification jobs whose peak lr is not the default job's 3e-3 (they collapsed in its warm-up)
SHAPES_LR = {n: 1.5e-3 for n in ('abc', 'gla', 'hgrn', 'hgrn2', 'lightnet', 'retnet', 'rwkv6')}
# hybrid configs of every LINEAR mixer: (stem, the pure config it inherits); softmax attention in every other block
HYBRIDS = {
    '{hy}-t-hybrid_1xb64_shapes-48px': '{hy}-t_1xb64_shapes-48px',
    '{hy}-t-hybrid_8xb128_in1k': '{hy}-t_8xb128_in1k',
    'simmim_{hy}-t-hybrid_1xb64-40e_shapes-32px': 'simmim_{hy}-t_1xb64-40e_shapes-32px',
    'simmim_{hy}-t-hybrid_8xb256-amp-coslr-100e_in1k-192px': 'simmim_{hy}-t_8xb256-amp-coslr-100e_in1k-192px',
}


@functools.lru_cache(maxsize=None)
def _load(path):
    return Config.fromfile(path, import_custom_modules=False)


def load(path):
    """A config by path (relative to configs/), parsed once per session; callers get their own copy."""
    return copy.deepcopy(_load(path if osp.isabs(path) else osp.join(CONFIGS, path)))


def _types(obj, key=None):
    """(key, type) of every dict with a string ``type`` in a config tree."""
    if isinstance(obj, dict):
        if isinstance(obj.get('type'), str):
            yield key, obj['type']
        for k, v in obj.items():
            yield from _types(v, k)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _types(v, key)


def _registered_names():
    """{scope: names a config of that default scope can use}: every MMEngine root registry's own names plus its
    child of that scope's, 'scope.Name' forms, mmpretrain's batch augments; vla_mm's mixers and scans apart."""
    import mmengine.registry as R
    import vla_mm  # noqa: F401  (before mmpretrain.models: the compatibility fixes)
    from mmdet.utils import register_all_modules as det
    from mmpretrain.registry import BATCH_AUGMENTS
    from mmpretrain.utils import register_all_modules as cls
    from mmseg.utils import register_all_modules as seg
    for register in (cls, seg, det):
        register(init_default_scope=False)
    roots = [v for v in vars(R).values() if isinstance(v, R.Registry)] + [BATCH_AUGMENTS]
    common, scoped = set(), {}
    for reg in roots:
        reg.import_from_location()
        common |= set(reg.module_dict)
        for scope, child in reg.children.items():
            child.import_from_location()   # the lazy 'locations' of a scope (vla_mm.datasets, ...)
            scoped.setdefault(scope, set()).update(child.module_dict)
    dotted = {f'{scope}.{n}' for scope, names in scoped.items() for n in names}
    return {scope: common | names | dotted for scope, names in scoped.items()}


def test_every_config_loads_and_names_registered_types():
    import mmcv.ops
    from vla_mm.models.layers.patch_embed import STEMS
    from vla_mm.registry import MIXERS as MIXER_REG
    from vla_mm.registry import SCANS
    names = _registered_names()
    by_key = {'mixer': set(MIXER_REG.module_dict), 'attn_mixer': set(MIXER_REG.module_dict),
              'scan': set(SCANS.module_dict), 'stem': set(STEMS),
              # mmdet takes these from mmcv.ops by name
              'roi_layer': {n for n in dir(mmcv.ops) if n[0].isupper()}, 'nms': {'nms', 'soft_nms'}}
    assert len(ALL) >= 150
    missing = []
    for path in ALL:
        cfg = load(path)
        known = names[cfg.get('default_scope', 'mmpretrain')]
        missing += [f'{osp.relpath(path, CONFIGS)}: {key}={t!r}' for key, t in _types(cfg.to_dict())
                    if t not in by_key.get(key, known)]
    assert not missing, missing


def test_every_mixer_has_its_family_bases_and_task_configs():
    for name, hy in MIXERS.items():
        for s, arch in (('t', 'tiny'), ('s', 'small'), ('b', 'base')):
            base = load(osp.join(CONFIGS, '_base_/models/isotropic', f'{hy}-{s}.py'))
            assert base.backbone.type == 'vla_mm.IsotropicBackbone' and base.backbone.arch == arch
            assert base.backbone.mixer.type == name
        got = {osp.basename(p)[:-3] for p in glob.glob(osp.join(CONFIGS, name, '*.py'))}
        hybrids = {stem.format(hy=hy) for stem in HYBRIDS} if name in LINEAR else set()
        if name == 'linear_attn':   # its own layout, its hybrids as the others'
            assert hybrids <= got, hybrids - got
            continue
        want = {stem.format(hy=hy) for stem in TASKS} | hybrids
        want |= {f'{hy}-t-{r}_1xb64_shapes-48px' for r in ('bi', 'cross') if name in ROUTED}
        assert got == want, (name, got ^ want)
        assert osp.isfile(osp.join(CONFIGS, name, 'README.md'))
        for s, width in (('t', 192), ('s', 384), ('b', 768)):
            cfg = load(f'{name}/{hy}-{s}_8xb128_in1k.py')
            fam = load(f'_base_/models/isotropic/{hy}-{s}.py')
            assert {k: cfg.model.backbone[k] for k in fam.backbone} == fam.backbone   # the task base adds the rest
            assert cfg.model.head.in_channels == width


def _depth(backbone):
    return backbone.arch['num_layers'] if isinstance(backbone.arch, dict) else 12


@pytest.mark.parametrize('name', [n for n in MIXERS if n != 'linear_attn'])
def test_swapped_configs_change_only_the_mixer(name):
    """A task config of another mixer resolves to its linear_attn counterpart but for the mixer (the family base's
    mixer; ``num_layers`` is the backbone's depth) and the pre-trained checkpoint it names; the route variants add
    ``scan`` only (the hybrids: test_hybrid_configs_add_only_attn_layers)."""
    hy = MIXERS[name]
    fam_mixer = load(f'_base_/models/isotropic/{hy}-t.py').backbone.mixer.to_dict()
    for stem, other in TASKS.items():
        if other is None:
            continue
        cfg = load(f'{name}/{stem.format(hy=hy)}.py').to_dict()
        ref = load(f'linear_attn/{other}.py').to_dict()
        mixer = cfg['model']['backbone'].pop('mixer')
        ref['model']['backbone'].pop('mixer')
        want = dict(fam_mixer, num_layers=_depth(load(f'linear_attn/{other}.py').model.backbone)) \
            if 'num_layers' in fam_mixer else fam_mixer
        assert mixer == want, stem
        ckpt = cfg['model']['backbone'].get('init_cfg') or {}
        if 'checkpoint' in ckpt and 'pretrained' in ref:
            assert ckpt['checkpoint'] == cfg['pretrained'] == f'work_dirs/{hy}-t_8xb128_in1k/epoch_300.pth'
            ref['model']['backbone']['init_cfg']['checkpoint'] = ref['pretrained'] = cfg['pretrained']
        if stem == '{hy}-t_1xb64_shapes-48px':
            assert cfg['optim_wrapper']['optimizer']['lr'] == SHAPES_LR.get(name, 3e-3)
            cfg['optim_wrapper']['optimizer']['lr'] = ref['optim_wrapper']['optimizer']['lr']
        assert cfg == ref, stem
    shapes = load(f'{name}/{hy}-t_1xb64_shapes-48px.py').to_dict()
    for r in ('bi', 'cross') if name in ROUTED else ():
        cfg = load(f'{name}/{hy}-t-{r}_1xb64_shapes-48px.py').to_dict()
        assert cfg['model']['backbone'].pop('scan') == dict(type=r)
        assert cfg == shapes, r


@pytest.mark.parametrize('name', LINEAR)
def test_hybrid_configs_add_only_attn_layers(name):
    """A hybrid config resolves to its pure config plus ``attn_layers``: the odd blocks (every other one, the FLA
    vision encoders' placement), 1 and 3 of the 4-block shapes models, 1, 3, ..., 11 of the 12-block T models; a
    SimMIM hybrid and the classification hybrid it pre-trains share the placement."""
    hy = MIXERS[name]
    for stem, pure in HYBRIDS.items():
        cfg = load(f'{name}/{stem.format(hy=hy)}.py').to_dict()
        ref = load(f'{name}/{pure.format(hy=hy)}.py')
        depth = _depth(ref.model.backbone)
        assert depth == (4 if 'shapes' in stem else 12)
        assert cfg['model']['backbone'].pop('attn_layers') == tuple(range(1, depth, 2)), stem
        assert cfg == ref.to_dict(), stem


# the SimMIM hybrids run in test_hybrid_simmim_step_and_in1k_hybrid_backbones (with masks and a backward)
SHAPES = [p for p in ALL if 'shapes' in osp.basename(p) and not re.match(r'simmim_.*-hybrid_', osp.basename(p))]


def test_shapes_backbones_build_and_run_at_48px():
    """The backbone of every shapes config builds and gives finite outputs of the configured widths on a 48x48
    image (the pyramid: 64x64, its total stride is 32)."""
    from vla_mm.registry import MODELS
    torch.manual_seed(0)
    assert len(SHAPES) >= 70
    seen = set()
    for path in SHAPES:
        bb = load(path).model.backbone
        bb.pop('init_cfg', None)
        if repr(bb) in seen:   # the old names under configs/linear_vit resolve to their new configs' backbones
            continue
        seen.add(repr(bb))
        model = MODELS.build(bb).eval()
        size = 64 if 'Hierarchical' in bb.type else 48
        with torch.no_grad():
            out = model(torch.randn(1, 3, size, size))
        outs = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
        assert outs and all(bool(torch.isfinite(o).all()) for o in outs), path
        if 'Isotropic' in bb.type and 'MAE' not in bb.type:
            assert len(outs) == len(model.out_indices), path
            assert all(o.shape[:2] == (1, model.embed_dims) for o in outs), path


def _mixer_kinds(backbone):
    return ['attn' if type(layer.mixer).__name__ == 'SoftmaxAttention' else type(layer.mixer).__name__
            for layer in backbone.layers]


@pytest.mark.parametrize('name', LINEAR)
def test_hybrid_simmim_step_and_in1k_hybrid_backbones(name):
    """The shapes hybrid SimMIM model (4 blocks, 32 px) takes one loss + backward with masks: the masked patches'
    pixels do not reach the output (exactly), the mask token and every block's mixer get finite, non-zero
    gradients. The ImageNet hybrid backbones (classification and SimMIM) build with their 12 blocks, 48 wide for
    speed, and run on a 32 px image (SimMIM's with a mask)."""
    from mmengine.registry import MODELS, DefaultScope
    import vla_mm  # noqa: F401  (before mmpretrain.models: the compatibility fixes)
    from mmpretrain.structures import DataSample
    hy = MIXERS[name]
    cfg = load(f'{name}/simmim_{hy}-t-hybrid_1xb64-40e_shapes-32px.py')
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    kind = type(model.backbone.layers[0].mixer).__name__
    assert _mixer_kinds(model.backbone) == [kind, 'attn', kind, 'attn'] and kind != 'SoftmaxAttention'
    x = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, 8, 8) < 0.6   # 8x8 patches of 4 px
    mask[:, 0, 0], mask[:, 0, 1] = True, False
    loss = model.loss(x, [DataSample(mask=m.long()) for m in mask])['loss']
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads['mask_token'].abs().sum() > 0
    for i in range(4):
        assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith(f'layers.{i}.mixer.')), i
    pixels = mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand_as(x)
    with torch.no_grad():
        out = model.backbone(x, mask.long())[0]
        assert torch.equal(model.backbone(torch.where(pixels, torch.randn_like(x), x), mask.long())[0], out)
        assert not torch.equal(model.backbone(torch.where(pixels, x, torch.randn_like(x)), mask.long())[0], out)

    small = dict(embed_dims=48, num_layers=12, num_heads=3)
    for stem in ('{hy}-t-hybrid_8xb128_in1k', 'simmim_{hy}-t-hybrid_8xb256-amp-coslr-100e_in1k-192px'):
        bb = load(f'{name}/{stem.format(hy=hy)}.py').model.backbone
        assert bb.arch == 'tiny'   # DeiT-T: 12 blocks
        bb = MODELS.build(dict(bb, arch=small, img_size=32))
        assert bb.attn_layers == [1, 3, 5, 7, 9, 11]
        assert _mixer_kinds(bb) == [kind, 'attn'] * 6
        with torch.no_grad():
            out = bb(torch.randn(1, 3, 32, 32), torch.ones(1, 2, 2) if 'simmim' in stem else None)
        assert out[-1].shape == (1, 48, 2, 2) and torch.isfinite(out[-1]).all()


TINY_SHAPES = dict(image_size=48, num_train=4, num_val=4, min_shapes=1, max_shapes=1, size_range=[0.3, 0.45],
                   clutter=0.5, seed=0)


def _train(name, root, data):
    """``tools/train.py`` on mixer ``name``'s shapes config with 4 training and 4 validation images, batch 4, two
    epochs: two iterations and two validations. Returns (the process, its work dir)."""
    work = root / name
    work.mkdir()
    config = osp.join(CONFIGS, name, f'{MIXERS[name]}-t_1xb64_shapes-48px.py')
    (work / 'tiny.py').write_text(f'''
_base_ = [{config!r}]
shapes_generate = {TINY_SHAPES!r}
train_dataloader = dict(batch_size=4, num_workers=0, dataset=dict(data_root={data!r}, generate=shapes_generate))
val_dataloader = dict(batch_size=4, num_workers=0, dataset=dict(data_root={data!r}, generate=shapes_generate))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2, max_keep_ckpts=1, save_best=None))
''')
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    env.pop('TRITON_INTERPRET', None)
    p = subprocess.run([sys.executable, 'tools/train.py', str(work / 'tiny.py'), '--work-dir', str(work / 'out')],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    return p, work / 'out'


@pytest.fixture(scope='module')
def train_runs(tmp_path_factory):
    """The train.py runs of every mixer, two at a time (one thread each: CI has two cores) on one tiny data set
    generated here first; each test waits for its own."""
    from vla_mm.datasets import shapes
    root = tmp_path_factory.mktemp('train')
    data = str(root / 'shapes_cls')
    shapes.generate('cls', data, TINY_SHAPES, logger=None)
    pool = ThreadPoolExecutor(max_workers=2)
    yield {name: pool.submit(_train, name, root, data) for name in MIXERS}
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize('name', list(MIXERS))
def test_train_two_iterations_of_each_mixer_shapes_config(name, train_runs):
    p, work = train_runs[name].result(timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert osp.isfile(work / 'epoch_2.pth')
    log = p.stdout + p.stderr
    assert 'Epoch(train) [2][1/1]' in log and 'accuracy/top1' in log, log[-2000:]
    losses = [float(x) for x in re.findall(r'Epoch\(train\).*?\bloss: ([-+.\w]+)', log)]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
    state = torch.load(work / 'epoch_2.pth', map_location='cpu', weights_only=False)['state_dict']
    mixer_keys = [k for k in state if k.startswith('backbone.layers.0.mixer.')]
    assert mixer_keys and all(torch.isfinite(state[k]).all() for k in state if state[k].is_floating_point())
