"""The shapes generator: determinism, on-disk formats, label map / COCO agreement, regeneration."""
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vla_mm.datasets import shapes as S

from .conftest import CLS_PARAMS, SCENE_PARAMS


def _files(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = osp.join(d, n)
            with open(p, 'rb') as f:
                out[osp.relpath(p, root)] = f.read()
    return out


@pytest.mark.parametrize('task', S.TASKS)
def test_same_seed_byte_identical_whatever_the_workers(task, shapes_roots, tmp_path):
    params = CLS_PARAMS if task == 'cls' else SCENE_PARAMS
    other = str(tmp_path / task)
    S.generate(task, other, params, num_workers=2, logger=None)  # other process layout, same output
    a, b = _files(shapes_roots[task]), _files(other)
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]


def test_different_seed_differs(shapes_roots, tmp_path):
    S.generate('cls', str(tmp_path / 'cls'), dict(CLS_PARAMS, seed=1), logger=None)
    a, b = _files(shapes_roots['cls']), _files(str(tmp_path / 'cls'))
    assert a['meta/train.txt'] != b['meta/train.txt'] and a[S.META_FILE] != b[S.META_FILE]
    pngs = [k for k in a if k.endswith('.png') and k in b]
    assert sum(a[k] != b[k] for k in pngs) == len(pngs)  # every common image differs


def test_image_depends_only_on_seed_split_index():
    p = S.resolve_params('seg', SCENE_PARAMS)
    img1, lab1, _ = S.make_scene(p, 'train', 3)
    S.make_scene(p, 'val', 3)
    img2, lab2, _ = S.make_scene(p, 'train', 3)
    assert np.array_equal(img1, img2) and np.array_equal(lab1, lab2)
    assert not np.array_equal(img1, S.make_scene(p, 'val', 3)[0])


def test_cls_imagenet_layout(shapes_roots):
    root = shapes_roots['cls']
    classes = open(osp.join(root, 'meta', 'classes.txt')).read().split()
    assert classes == list(S.ALL_CLASSES) and len(classes) >= 6
    for split, n in (('train', CLS_PARAMS['num_train']), ('val', CLS_PARAMS['num_val'])):
        lines = open(osp.join(root, 'meta', f'{split}.txt')).read().splitlines()
        assert len(lines) == n
        for line in lines:
            rel, label = line.rsplit(' ', 1)
            assert rel.split('/')[0] == classes[int(label)]
            img = cv2.imread(osp.join(root, split, rel), cv2.IMREAD_UNCHANGED)
            assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    meta = json.load(open(osp.join(root, S.META_FILE)))
    assert meta['task'] == 'cls' and meta['params']['image_size'] == 32


def test_cls_image_draws_only_its_class():
    p = S.resolve_params('cls', dict(image_size=64))
    for i in range(20):
        img, label = S.make_cls_image(p, 'train', i)
        assert img.shape == (64, 64, 3) and 0 <= label < len(S.ALL_CLASSES)
    labels = {S.make_cls_image(p, 'train', i)[1] for i in range(60)}
    assert labels == set(range(len(S.ALL_CLASSES)))


@pytest.mark.parametrize('split', ['train', 'val'])
def test_label_maps_agree_with_coco_masks(shapes_roots, split):
    seg, det = shapes_roots['seg'], shapes_roots['det']
    coco = COCO(osp.join(det, 'annotations', f'instances_{split}2017.json'))
    n = SCENE_PARAMS['num_train' if split == 'train' else 'num_val']
    assert len(coco.getImgIds()) == n
    assert [c['id'] for c in coco.loadCats(coco.getCatIds())] == list(range(1, len(S.ALL_CLASSES) + 1))
    seg_dir = 'training' if split == 'train' else 'validation'
    num_classes = len(S.ALL_CLASSES)
    seen = set()
    for img_info in coco.loadImgs(coco.getImgIds()):
        stem = osp.splitext(img_info['file_name'])[0]
        lab = cv2.imread(osp.join(seg, 'annotations', seg_dir, stem + '.png'), cv2.IMREAD_UNCHANGED)
        assert lab.dtype == np.uint8 and lab.ndim == 2 and lab.shape == (64, 64)
        assert lab.max() <= num_classes
        assert osp.isfile(osp.join(seg, 'images', seg_dir, stem + '.jpg'))
        assert osp.isfile(osp.join(det, f'{split}2017', img_info['file_name']))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_info['id']))
        assert len(anns) >= SCENE_PARAMS.get('min_shapes', 2)
        union = np.zeros_like(lab, dtype=bool)
        for ann in anns:
            m = coco.annToMask(ann).astype(bool)
            assert np.array_equal(m, mask_utils.decode(ann['segmentation']).astype(bool))
            assert ann['iscrowd'] == 0 and 1 <= ann['category_id'] <= num_classes
            assert m.sum() == ann['area'] > 0
            assert not (union & m).any(), 'instances overlap'
            union |= m
            # exactly the pixels of that class in the label map, same pixel count
            assert (lab[m] == ann['category_id']).all()
            # bbox [x, y, w, h] tightly encloses the mask
            x, y, w, h = ann['bbox']
            ys, xs = np.nonzero(m)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            seen.add(ann['category_id'])
        assert np.array_equal(union, lab > 0)
        for k in range(1, num_classes + 1):
            assert (lab == k).sum() == sum(a['area'] for a in anns if a['category_id'] == k)
    if split == 'train':
        assert len(seen) >= 4


def test_unchanged_params_do_nothing_changed_params_regenerate(tmp_path, capsys):
    root = str(tmp_path / 'cls')
    p = dict(image_size=32, num_train=6, num_val=2)
    assert S.generate('cls', root, p, logger=None) == 'generated'
    mtime = os.stat(osp.join(root, S.META_FILE)).st_mtime_ns
    assert S.generate('cls', root, p, logger=None) == 'exists'
    assert S.ensure_generated('cls', root, p, logger=None) == 'exists'
    assert os.stat(osp.join(root, S.META_FILE)).st_mtime_ns == mtime
    assert S.generate('cls', root, dict(p, num_train=9), logger='print') == 'regenerated'
    out = capsys.readouterr().out
    assert 'different parameters' in out and 'num_train: 6 -> 9' in out
    assert len(open(osp.join(root, 'meta', 'train.txt')).readlines()) == 9
    assert json.load(open(osp.join(root, S.META_FILE)))['params']['num_train'] == 9
    # a class subset removes the old class folders (fresh directory swapped in atomically)
    S.generate('cls', root, dict(p, classes=['star', 'circle']), logger=None)
    assert sorted(os.listdir(osp.join(root, 'train'))) == ['circle', 'star']
    assert not [n for n in os.listdir(tmp_path) if n.startswith('.cls.tmp') or n.startswith('.cls.old')]


def test_refuses_foreign_directory_and_bad_params(tmp_path):
    foreign = tmp_path / 'real'
    foreign.mkdir()
    (foreign / 'keep.txt').write_text('not generated')
    with pytest.raises(FileExistsError, match='not a generated shapes'):
        S.generate('cls', str(foreign), dict(num_train=1, num_val=1), logger=None)
    assert (foreign / 'keep.txt').exists()
    with pytest.raises(S.ShapesParamError, match='unknown shape class'):
        S.resolve_params('seg', dict(classes=['ring']))
    with pytest.raises(S.ShapesParamError, match='unknown shapes generation parameter'):
        S.resolve_params('det', dict(img_size=3))
    with pytest.raises(S.ShapesParamError, match='min_shapes'):
        S.resolve_params('det', dict(min_shapes=4, max_shapes=2))
    with pytest.raises(S.ShapesParamError, match='task'):
        S.resolve_params('depth')


def test_refuses_to_replace_another_task(tmp_path):
    root = str(tmp_path / 'x')
    S.generate('cls', root, dict(image_size=32, num_train=2, num_val=1), logger=None)
    with pytest.raises(FileExistsError, match="holds shapes 'cls' data"):
        S.generate('seg', root, dict(image_size=32, num_train=2, num_val=1), logger=None)


def _gen_in_child(root, queue):
    queue.put(S.ensure_generated('seg', root, dict(image_size=32, num_train=12, num_val=2), logger=None))


def test_concurrent_processes_generate_once(tmp_path):
    """Independent processes (no torch.distributed) serialise on the file lock: one generates, one finds it."""
    import multiprocessing as mp
    ctx = mp.get_context('fork')
    queue = ctx.Queue()
    root = str(tmp_path / 'seg')
    procs = [ctx.Process(target=_gen_in_child, args=(root, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(queue.get(timeout=5) for _ in procs) == ['exists', 'generated']
    assert S.is_up_to_date('seg', root, dict(image_size=32, num_train=12, num_val=2))


@pytest.mark.parametrize('rank', [0, 1])
def test_distributed_only_rank0_generates(tmp_path, monkeypatch, rank):
    """With world_size > 1, rank 0 generates before the barrier; other ranks only wait (shared storage) or
    generate their own identical copy after it (node-local storage)."""
    import mmengine.dist as dist
    root = str(tmp_path / 'cls')
    p = dict(image_size=32, num_train=3, num_val=1)
    events = []

    def barrier():
        events.append(('barrier', osp.exists(osp.join(root, S.META_FILE))))
        if rank == 1:  # stands for rank 0 writing to the shared storage meanwhile
            S.generate('cls', root, p, logger=None)

    monkeypatch.setattr(dist, 'get_dist_info', lambda: (rank, 2))
    monkeypatch.setattr(dist, 'barrier', barrier)
    status = S.ensure_generated('cls', root, p, logger=None)
    if rank == 0:
        assert events == [('barrier', True)] and status == 'generated'
    else:
        assert events == [('barrier', False)] and status == 'exists'
        # node-local storage: nothing there after the barrier -> this rank generates its own copy
        events.clear()
        monkeypatch.setattr(dist, 'barrier', lambda: events.append('barrier'))
        root2 = str(tmp_path / 'local')
        assert S.ensure_generated('cls', root2, p, logger=None) == 'generated' and events == ['barrier']
