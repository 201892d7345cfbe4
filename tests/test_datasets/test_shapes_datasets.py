"""The OpenMMLab dataset classes: registry builds from every library's scope, pipelines, generate-on-use."""
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope

import vla_mm.datasets  # noqa: F401  (registers the classes)
from vla_mm.datasets import ShapesClsDataset, ShapesCocoDataset, ShapesSegDataset
from vla_mm.datasets import shapes as S
from vla_mm.registry import DATASETS

from .conftest import CLS_PARAMS, SCENE_PARAMS

CLS_PIPE = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
SEG_PIPE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
DET_PIPE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
            dict(type='PackDetInputs')]


def _registry(scope):
    if scope == 'mmpretrain':
        from mmpretrain.registry import DATASETS as R
    elif scope == 'mmseg':
        from mmseg.registry import DATASETS as R
    else:
        from mmdet.registry import DATASETS as R
    return R


def test_registered_in_vla_mm_scope():
    assert DATASETS.scope == 'vla_mm'
    for name in ('ShapesClsDataset', 'ShapesSegDataset', 'ShapesCocoDataset'):
        assert DATASETS.get(name) is not None
        for scope in ('mmpretrain', 'mmseg', 'mmdet'):
            assert _registry(scope).get(f'vla_mm.{name}') is DATASETS.get(name)


@pytest.mark.parametrize('split', ['train', 'val'])
def test_cls_dataset_through_mmpretrain(shapes_roots, split):
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        ds = _registry('mmpretrain').build(dict(type='vla_mm.ShapesClsDataset', data_root=shapes_roots['cls'],
                                                split=split, generate=CLS_PARAMS, pipeline=CLS_PIPE))
    assert isinstance(ds, ShapesClsDataset)
    assert len(ds) == CLS_PARAMS['num_train' if split == 'train' else 'num_val']
    assert ds.metainfo['classes'] == S.ALL_CLASSES and len(ds.metainfo['classes']) == 6
    labels = [ds.get_data_info(i)['gt_label'] for i in range(len(ds))]
    assert all(0 <= int(label) < 6 for label in labels)
    sample = ds[0]
    assert set(sample) == {'inputs', 'data_samples'}
    assert sample['inputs'].shape == (3, 32, 32) and sample['inputs'].dtype == torch.uint8
    assert int(sample['data_samples'].gt_label) == int(labels[0])
    # the label is the folder's class
    info = ds.get_data_info(0)
    assert osp.basename(osp.dirname(info['img_path'])) == S.ALL_CLASSES[int(info['gt_label'])]


def test_seg_dataset_through_mmseg(shapes_roots):
    with DefaultScope.overwrite_default_scope('mmseg'):
        ds = _registry('mmseg').build(dict(type='vla_mm.ShapesSegDataset', data_root=shapes_roots['seg'],
                                           split='val', generate=SCENE_PARAMS, pipeline=SEG_PIPE))
    assert len(ds) == SCENE_PARAMS['num_val']
    assert ds.metainfo['classes'] == ('background',) + S.ALL_CLASSES
    assert len(ds.metainfo['palette']) == 7 and ds.reduce_zero_label is False and ds.label_map is None
    sample = ds[0]
    assert set(sample) == {'inputs', 'data_samples'}
    assert sample['inputs'].shape == (3, 64, 64)
    sem = sample['data_samples'].gt_sem_seg.data
    assert sem.shape == (1, 64, 64)
    values = set(sem.unique().tolist())
    assert 0 in values and values <= set(range(7)) and len(values) >= 2


def test_det_dataset_through_mmdet(shapes_roots):
    with DefaultScope.overwrite_default_scope('mmdet'):
        ds = _registry('mmdet').build(dict(type='vla_mm.ShapesCocoDataset', data_root=shapes_roots['det'],
                                           split='train', generate=SCENE_PARAMS, pipeline=DET_PIPE))
    assert len(ds) == SCENE_PARAMS['num_train']
    assert ds.metainfo['classes'] == S.ALL_CLASSES and len(ds.metainfo['palette']) == 6
    sample = ds[0]
    assert set(sample) == {'inputs', 'data_samples'}
    assert sample['inputs'].shape == (3, 64, 64)
    inst = sample['data_samples'].gt_instances
    n = len(ds.get_data_info(0)['instances'])
    assert n >= 2 and inst.bboxes.shape == (n, 4) and inst.masks.masks.shape == (n, 64, 64)
    assert inst.labels.min() >= 0 and inst.labels.max() < 6
    # boxes enclose the masks (mmdet boxes are x1, y1, x2, y2 with x2 = x1 + w)
    for box, mask in zip(inst.bboxes.tensor.numpy(), inst.masks.masks):
        ys, xs = np.nonzero(mask)
        assert box[0] <= xs.min() and box[1] <= ys.min() and xs.max() < box[2] and ys.max() < box[3]


def test_generated_on_first_use_with_class_subset(tmp_path):
    """A missing data root is generated on construction; a class subset shows in the metainfo and labels."""
    gen = dict(image_size=48, num_train=8, num_val=3, classes=['star', 'circle'], min_shapes=1, max_shapes=3)
    root = str(tmp_path / 'seg')
    with DefaultScope.overwrite_default_scope('mmseg'):
        seg = ShapesSegDataset(data_root=root, split='train', generate=gen, pipeline=SEG_PIPE)
    assert osp.isfile(osp.join(root, S.META_FILE)) and len(seg) == 8
    assert seg.metainfo['classes'] == ('background', 'circle', 'star') and seg.label_map is None
    assert set(seg[0]['data_samples'].gt_sem_seg.data.unique().tolist()) <= {0, 1, 2}

    cls = ShapesClsDataset(data_root=str(tmp_path / 'cls'), split='val', generate=gen)
    assert len(cls) == 3 and cls.metainfo['classes'] == ('circle', 'star')
    det = ShapesCocoDataset(data_root=str(tmp_path / 'det'), split='val', generate=gen)
    assert len(det) == 3 and det.metainfo['classes'] == ('circle', 'star')
    assert {i['bbox_label'] for k in range(3) for i in det.get_data_info(k)['instances']} <= {0, 1}
    # generate=False loads as is, reading the classes from shapes_meta.json
    again = ShapesClsDataset(data_root=str(tmp_path / 'cls'), split='train', generate=False)
    assert len(again) == 8 and again.metainfo['classes'] == ('circle', 'star')
    with pytest.raises(ValueError, match='differ from the classes'):
        ShapesClsDataset(data_root=str(tmp_path / 'cls'), generate=gen, metainfo=dict(classes=('square',)))
    with pytest.raises(ValueError, match='split'):
        ShapesClsDataset(data_root=str(tmp_path / 'cls'), split='test', generate=gen)
