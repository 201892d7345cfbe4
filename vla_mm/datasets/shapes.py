"""Deterministic synthetic "shapes" data in three real on-disk formats.

One generator, three layouts (see ``docs/datasets.md``):

* ``cls``: ImageNet folder layout, ``<root>/{train,val}/<class>/<id>.png`` + ``<root>/meta/{train,val}.txt``
  ("<class>/<id>.png <label>" lines, relative to the split folder) + ``<root>/meta/classes.txt``.
  Every image holds 1..3 shapes of ONE class, so the label is unambiguous.
* ``seg``: ADE20K layout, ``<root>/images/{training,validation}/<id>.jpg`` +
  ``<root>/annotations/{training,validation}/<id>.png`` uint8 label maps: 0 = background (a real class,
  ``reduce_zero_label=False``), ``k`` = the k-th shape class (1..C).
* ``det``: COCO layout, ``<root>/{train2017,val2017}/<id>.jpg`` +
  ``<root>/annotations/instances_{train2017,val2017}.json``; category ids 1..C, ``iscrowd=0``, masks as
  compressed RLE that are exactly the shape's pixels.

``seg`` and ``det`` are two views of the SAME scenes: a scene depends only on (seed, split, index) and the
scene parameters, never on the task, so with equal parameters label map ``<id>.png`` and the COCO annotations
of image ``<id>`` describe the same pixels. Shapes are rejection-sampled so they never overlap (nor touch), so
every mask is exactly the visible pixels of its shape.

Image ``i`` of split ``s`` is drawn from its own ``numpy.random.Generator`` seeded with
``(seed, stream, split, i)``: the output is the same whatever the order or the number of worker processes.
Drawing uses OpenCV without anti-aliasing for the shapes, so label maps are exact.

Only numpy + OpenCV (+ pycocotools for RLE) are needed here; the OpenMMLab dataset classes live in
``vla_mm/datasets/shapes_datasets.py``.
"""
import contextlib
import json
import os
import os.path as osp
import shutil
import time
from multiprocessing import get_context
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

GENERATOR_VERSION = 1

#: Every shape class the generator can draw, in label order (a ``classes`` subset keeps this order).
ALL_CLASSES = ('circle', 'square', 'triangle', 'star', 'hexagon', 'cross')
#: RGB colour per class (for metainfo palettes / visualisation); background is black.
ALL_PALETTE = ((220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 225, 25), (145, 30, 180), (245, 130, 48))
BACKGROUND_PALETTE = (0, 0, 0)

TASKS = ('cls', 'seg', 'det')
#: Default data roots, relative to the current directory (the tools run from the repository root).
DEFAULT_ROOTS = {'cls': 'data/shapes/cls', 'seg': 'data/shapes/seg', 'det': 'data/shapes/det'}
#: On-disk split folder names per task, for the logical splits ``train`` / ``val``.
SPLIT_DIRS = {
    'cls': {'train': 'train', 'val': 'val'},
    'seg': {'train': 'training', 'val': 'validation'},
    'det': {'train': 'train2017', 'val': 'val2017'},
}
SPLITS = ('train', 'val')
META_FILE = 'shapes_meta.json'

_COMMON_DEFAULTS = dict(seed=0, classes=list(ALL_CLASSES), clutter=1.0)
#: Default generation parameters per task. ``size_range`` is the shape radius as a fraction of image size.
DEFAULT_PARAMS = {
    'cls': dict(image_size=48, num_train=10000, num_val=600, min_shapes=1, max_shapes=1,
                size_range=[0.3, 0.45], **dict(_COMMON_DEFAULTS, clutter=0.5)),
    'seg': dict(image_size=128, num_train=400, num_val=100, min_shapes=2, max_shapes=6,
                size_range=[0.06, 0.15], **_COMMON_DEFAULTS),
    'det': dict(image_size=128, num_train=400, num_val=100, min_shapes=2, max_shapes=6,
                size_range=[0.06, 0.15], **_COMMON_DEFAULTS),
}
_MIN_RADIUS = 4  # pixels; smaller shapes are not recognisable
_GAP = 2  # pixels kept free between two shapes of a scene
_STREAM_IDS = {'cls': 1, 'scene': 2}
_SPLIT_IDS = {'train': 0, 'val': 1}


class ShapesParamError(ValueError):
    """Invalid generation parameters (the message says which and why)."""


# ----------------------------------------------------------------------------------------------------------
# parameters
# ----------------------------------------------------------------------------------------------------------
def resolve_params(task: str, params: Optional[dict] = None) -> dict:
    """Return the full, validated parameter dict of ``task``: its defaults updated with ``params``."""
    if task not in TASKS:
        raise ShapesParamError(f'unknown shapes task {task!r}; expected one of {TASKS}')
    params = dict(params or {})
    out = dict(DEFAULT_PARAMS[task])
    unknown = sorted(set(params) - set(out))
    if unknown:
        raise ShapesParamError(f'unknown shapes generation parameter(s) {unknown}; valid: {sorted(out)}')
    out.update({k: v for k, v in params.items() if v is not None})

    def _int(name, lo):
        v = out[name]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ShapesParamError(f'{name} must be an integer >= {lo}, got {v!r}')
        out[name] = int(v)

    _int('image_size', 16)
    _int('num_train', 0)
    _int('num_val', 0)
    _int('min_shapes', 1)
    _int('max_shapes', 1)
    _int('seed', 0)
    if out['min_shapes'] > out['max_shapes']:
        raise ShapesParamError(f"min_shapes ({out['min_shapes']}) > max_shapes ({out['max_shapes']})")
    sr = out['size_range']
    if (not isinstance(sr, (list, tuple)) or len(sr) != 2 or not all(isinstance(x, (int, float)) for x in sr)
            or not 0 < sr[0] <= sr[1] <= 0.5):
        raise ShapesParamError(f'size_range must be [lo, hi] with 0 < lo <= hi <= 0.5, got {sr!r}')
    out['size_range'] = [float(sr[0]), float(sr[1])]
    if isinstance(out['clutter'], bool) or not isinstance(out['clutter'], (int, float)) \
            or not 0 <= out['clutter'] <= 1:
        raise ShapesParamError(f"clutter must be a number in [0, 1], got {out['clutter']!r}")
    out['clutter'] = float(out['clutter'])
    classes = out['classes']
    if isinstance(classes, str) or not isinstance(classes, (list, tuple)) or len(classes) == 0:
        raise ShapesParamError(f'classes must be a non-empty list of names from {ALL_CLASSES}, got {classes!r}')
    bad = [c for c in classes if c not in ALL_CLASSES]
    if bad:
        raise ShapesParamError(f'unknown shape class(es) {bad}; available: {list(ALL_CLASSES)}')
    if len(set(classes)) != len(classes):
        raise ShapesParamError(f'classes contains duplicates: {list(classes)}')
    # keep the canonical order so that a subset's label order does not depend on how it was written
    out['classes'] = [c for c in ALL_CLASSES if c in classes]
    return out


def class_palette(classes: Sequence[str]) -> List[Tuple[int, int, int]]:
    """RGB palette entries of ``classes`` (names from :data:`ALL_CLASSES`)."""
    return [tuple(ALL_PALETTE[ALL_CLASSES.index(c)]) for c in classes]


def _rng(stream: str, seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _STREAM_IDS[stream], _SPLIT_IDS[split], int(index)])


# ----------------------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------------------
def _polygon(name: str, r: float, angle: float) -> np.ndarray:
    """Vertices (float, centred at 0) of shape ``name`` with outer radius ``r`` rotated by ``angle``."""
    if name == 'square':
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif name == 'triangle':
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif name == 'hexagon':
        t = np.arange(6) * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif name == 'star':
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        pts = np.stack([np.cos(t) * rad, np.sin(t) * rad], 1)
    elif name == 'cross':
        w = 0.34 * r
        pts = np.array([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
                        (-r, -w), (-w, -w)], dtype=np.float64)
    else:
        raise ValueError(name)
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _shape_mask(name: str, size: int, cx: int, cy: int, r: float, angle: float) -> np.ndarray:
    """uint8 {0,1} mask of one shape, drawn without anti-aliasing."""
    mask = np.zeros((size, size), np.uint8)
    if name == 'circle':
        cv2.circle(mask, (int(cx), int(cy)), int(round(r)), 1, thickness=-1, lineType=cv2.LINE_8)
    else:
        pts = np.round(_polygon(name, r, angle) + (cx, cy)).astype(np.int32)
        cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8)
    return mask


def _background(rng: np.random.Generator, size: int, clutter: float = 1.0) -> np.ndarray:
    """float32 HxWx3 textured background: colour gradient + low-frequency noise + lines + translucent blobs.

    ``clutter`` in [0, 1] scales how many of the drawn lines and blobs are painted (1: all; the random draws are
    the same whatever its value, so clutter=1 reproduces the original images exactly).
    """
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    phi = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = xx * np.cos(phi) + yy * np.sin(phi)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    grid = rng.normal(0, 25, (4, 4, 3)).astype(np.float32)
    img = img + cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.float32)
    n_lines = int(rng.integers(2, 7))
    for i in range(n_lines):  # random lines
        p0 = tuple(int(v) for v in rng.integers(0, size, 2))
        p1 = tuple(int(v) for v in rng.integers(0, size, 2))
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        thickness = int(rng.integers(1, 3))
        if i < round(n_lines * clutter):
            cv2.line(img, p0, p1, colour, thickness=thickness, lineType=cv2.LINE_AA)
    n_blobs = int(rng.integers(1, 5))
    for i in range(n_blobs):  # translucent elliptic blobs
        over = img.copy()
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(max(2, size // 16), max(3, size // 4), 2))
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.ellipse(over, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        a = float(rng.uniform(0.2, 0.45))
        if i < round(n_blobs * clutter):
            img = cv2.addWeighted(over, a, img, 1 - a, 0)
    return img


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A saturated colour (BGR float) that contrasts with ``under`` (mean background colour below the shape)."""
    best, best_d = None, -1.0
    for _ in range(12):
        hsv = np.array([[[rng.uniform(0, 180), rng.uniform(130, 255), rng.uniform(110, 255)]]], np.float32)
        colour = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
        d = float(np.linalg.norm(colour - under))
        if d > best_d:
            best, best_d = colour, d
        if d >= 90:
            break
    return best


def _place_shapes(rng: np.random.Generator, img: np.ndarray, names: Sequence[str], size_range,
                  max_tries: int = 24) -> List[Tuple[str, np.ndarray]]:
    """Rejection-sample non-overlapping placements of ``names`` and paint them onto ``img`` (in place).

    Returns ``[(name, mask)]`` for the shapes that were placed (the first one always fits)."""
    size = img.shape[0]
    occupied = np.zeros((size, size), np.uint8)
    kernel = np.ones((2 * _GAP + 1, 2 * _GAP + 1), np.uint8)
    placed = []
    for name in names:
        lo_r, hi_r = size_range
        for attempt in range(max_tries):
            # later attempts draw smaller shapes, which fit in the gaps more easily
            hi_t = hi_r - (hi_r - lo_r) * attempt / max_tries
            r = max(float(_MIN_RADIUS), rng.uniform(lo_r, hi_t) * size)
            r = min(r, size / 2 - 1)
            lo, hi = int(np.ceil(r)), int(np.floor(size - 1 - r))
            cx, cy = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
            angle = rng.uniform(0, 2 * np.pi)
            mask = _shape_mask(name, size, cx, cy, r, angle)
            if mask.any() and not (mask & occupied).any():
                break
        else:
            continue  # no room for this shape
        sel = mask.astype(bool)
        colour = _pick_colour(rng, img[sel].mean(0))
        img[sel] = colour
        occupied |= cv2.dilate(mask, kernel)
        placed.append((name, mask))
    return placed


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Add pixel noise over the whole image and convert to uint8 (BGR)."""
    img = img + rng.normal(0, rng.uniform(3, 10), img.shape).astype(np.float32)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_cls_image(params: dict, split: str, index: int) -> Tuple[np.ndarray, int]:
    """Classification image ``index`` of ``split``: (BGR uint8 HxWx3, label in 0..C-1)."""
    rng = _rng('cls', params['seed'], split, index)
    classes = params['classes']
    label = int(rng.integers(len(classes)))
    n = int(rng.integers(params['min_shapes'], params['max_shapes'] + 1))
    img = _background(rng, params['image_size'], params['clutter'])
    _place_shapes(rng, img, [classes[label]] * n, params['size_range'])
    return _finish(rng, img), label


def make_scene(params: dict, split: str, index: int) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, np.ndarray]]]:
    """Scene ``index`` of ``split`` (shared by ``seg`` and ``det``).

    Returns (BGR uint8 image, uint8 label map with 0 = background and k = class k-1 of ``classes``,
    ``[(class_index 0..C-1, uint8 {0,1} mask)]`` per instance). Masks are disjoint."""
    rng = _rng('scene', params['seed'], split, index)
    classes = params['classes']
    size = params['image_size']
    n = int(rng.integers(params['min_shapes'], params['max_shapes'] + 1))
    names = [classes[int(k)] for k in rng.integers(len(classes), size=n)]
    img = _background(rng, size, params['clutter'])
    placed = _place_shapes(rng, img, names, params['size_range'])
    label_map = np.zeros((size, size), np.uint8)
    instances = []
    for name, mask in placed:
        k = classes.index(name)
        label_map[mask.astype(bool)] = k + 1
        instances.append((k, mask))
    return _finish(rng, img), label_map, instances


# ----------------------------------------------------------------------------------------------------------
# writers (one image per call so that they can run in worker processes)
# ----------------------------------------------------------------------------------------------------------
def _stem(index: int) -> str:
    return f'{index + 1:06d}'


def _imwrite(path: str, img: np.ndarray, params=()):
    if not cv2.imwrite(path, img, list(params)):
        raise OSError(f'could not write {path}')


_JPEG = (cv2.IMWRITE_JPEG_QUALITY, 95)


def _write_cls(job):
    params, root, split, index = job
    img, label = make_cls_image(params, split, index)
    name = params['classes'][label]
    rel = f'{name}/{_stem(index)}.png'
    _imwrite(osp.join(root, SPLIT_DIRS['cls'][split], rel), img)
    return f'{rel} {label}'


def _write_seg(job):
    params, root, split, index = job
    img, label_map, _ = make_scene(params, split, index)
    d = SPLIT_DIRS['seg'][split]
    _imwrite(osp.join(root, 'images', d, _stem(index) + '.jpg'), img, _JPEG)
    _imwrite(osp.join(root, 'annotations', d, _stem(index) + '.png'), label_map)
    return None


def _write_det(job):
    from pycocotools import mask as mask_utils
    params, root, split, index = job
    img, _, instances = make_scene(params, split, index)
    file_name = _stem(index) + '.jpg'
    _imwrite(osp.join(root, SPLIT_DIRS['det'][split], file_name), img, _JPEG)
    anns = []
    for k, mask in instances:
        rle = mask_utils.encode(np.asfortranarray(mask))
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        anns.append(dict(category_id=k + 1, iscrowd=0, area=float(mask.sum()),
                         bbox=[float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)],
                         segmentation=dict(size=[int(mask.shape[0]), int(mask.shape[1])],
                                           counts=rle['counts'].decode('ascii'))))
    return dict(file_name=file_name, height=int(img.shape[0]), width=int(img.shape[1]), anns=anns)


_WRITERS = {'cls': _write_cls, 'seg': _write_seg, 'det': _write_det}


def _make_dirs(task: str, root: str, params: dict):
    for split in SPLITS:
        d = SPLIT_DIRS[task][split]
        if task == 'cls':
            for c in params['classes']:
                os.makedirs(osp.join(root, d, c), exist_ok=True)
            os.makedirs(osp.join(root, 'meta'), exist_ok=True)
        elif task == 'seg':
            os.makedirs(osp.join(root, 'images', d), exist_ok=True)
            os.makedirs(osp.join(root, 'annotations', d), exist_ok=True)
        else:
            os.makedirs(osp.join(root, d), exist_ok=True)
            os.makedirs(osp.join(root, 'annotations'), exist_ok=True)


def _write_split_index(task: str, root: str, params: dict, split: str, results: list):
    if task == 'cls':
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.writelines(line + '\n' for line in results)
    elif task == 'det':
        images, annotations = [], []
        for index, res in enumerate(results):
            image_id = index + 1
            images.append(dict(id=image_id, file_name=res['file_name'], height=res['height'], width=res['width']))
            for ann in res['anns']:
                annotations.append(dict(id=len(annotations) + 1, image_id=image_id, **ann))
        coco = dict(
            info=dict(description='vla_mm synthetic shapes (deterministic)', version=str(GENERATOR_VERSION)),
            licenses=[],
            images=images,
            annotations=annotations,
            categories=[dict(id=i + 1, name=c, supercategory='shape') for i, c in enumerate(params['classes'])])
        with open(osp.join(root, 'annotations', f"instances_{SPLIT_DIRS['det'][split]}.json"), 'w') as f:
            json.dump(coco, f, separators=(',', ':'))


def _meta_record(task: str, params: dict) -> dict:
    return dict(generator='vla_mm.datasets.shapes', generator_version=GENERATOR_VERSION, task=task, params=params)


def read_meta(root: str) -> Optional[dict]:
    """The ``shapes_meta.json`` record of ``root``, or None when missing/unreadable."""
    try:
        with open(osp.join(root, META_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_up_to_date(task: str, root: str, params: Optional[dict] = None) -> bool:
    """Whether ``root`` holds a complete generation of ``task`` with exactly these parameters."""
    return read_meta(root) == _meta_record(task, resolve_params(task, params))


def _describe_diff(old: Optional[dict], new: dict) -> str:
    if not old or not isinstance(old, dict):
        return 'unreadable shapes_meta.json'
    diffs = []
    for key in ('generator_version', 'task'):
        if old.get(key) != new[key]:
            diffs.append(f'{key}: {old.get(key)!r} -> {new[key]!r}')
    op = old.get('params') if isinstance(old.get('params'), dict) else {}
    for key in sorted(set(op) | set(new['params'])):
        if op.get(key) != new['params'].get(key):
            diffs.append(f'{key}: {op.get(key)!r} -> {new["params"].get(key)!r}')
    return ', '.join(diffs) or 'unknown difference'


def _log(msg: str, logger):
    if logger is None:
        return
    if logger == 'print':
        print(msg, flush=True)
    else:
        from mmengine.logging import print_log
        print_log(msg, logger=logger)


def generate(task: str, root: Optional[str] = None, params: Optional[dict] = None, num_workers: int = 0,
             force: bool = False, logger='current') -> str:
    """Generate the ``task`` data set into ``root`` (default :data:`DEFAULT_ROOTS`).

    Args:
        task: ``'cls'``, ``'seg'`` or ``'det'``.
        root: output directory; written to a temporary sibling directory then renamed into place.
        params: generation parameters overriding :data:`DEFAULT_PARAMS` ``[task]``.
        num_workers: worker processes (0 = in this process). The output does not depend on it.
        force: regenerate even when ``root`` is up to date.
        logger: mmengine logger name, ``'print'``, or None for silence.

    Returns:
        ``'exists'`` (already up to date, nothing done), ``'generated'`` or ``'regenerated'``.

    Raises:
        ShapesParamError: invalid parameters.
        FileExistsError: ``root`` exists, is not empty and was not written by this generator (or holds the
            data of another task).
    """
    params = resolve_params(task, params)
    root = osp.abspath(root or DEFAULT_ROOTS[task])
    record = _meta_record(task, params)
    status = 'generated'
    if osp.isdir(root) and os.listdir(root):
        old = read_meta(root)
        if old == record and not force:
            return 'exists'
        if old is None and not osp.exists(osp.join(root, META_FILE)):
            raise FileExistsError(
                f'{root} exists and is not a generated shapes data set (no {META_FILE}); '
                'remove it or choose another root')
        if isinstance(old, dict) and old.get('task') not in (None, task):
            raise FileExistsError(
                f"{root} holds shapes {old.get('task')!r} data; refusing to replace it with {task!r} data "
                '(use another root)')
        if old != record:
            _log(f'shapes: {root} was generated with different parameters ({_describe_diff(old, record)}); '
                 'regenerating', logger)
        status = 'regenerated'
    elif osp.exists(root) and not osp.isdir(root):
        raise FileExistsError(f'{root} exists and is not a directory')

    parent = osp.dirname(root)
    os.makedirs(parent, exist_ok=True)
    tmp = osp.join(parent, f'.{osp.basename(root)}.tmp-{os.getpid()}')
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()
    try:
        _make_dirs(task, tmp, params)
        writer = _WRITERS[task]
        pool = get_context('fork').Pool(num_workers) if num_workers and num_workers > 1 else None
        try:
            for split in SPLITS:
                n = params['num_train' if split == 'train' else 'num_val']
                jobs = [(params, tmp, split, i) for i in range(n)]
                results = pool.map(writer, jobs, chunksize=16) if pool else [writer(j) for j in jobs]
                _write_split_index(task, tmp, params, split, results)
        finally:
            if pool:
                pool.close()
                pool.join()
        if task == 'cls':
            with open(osp.join(tmp, 'meta', 'classes.txt'), 'w') as f:
                f.writelines(c + '\n' for c in params['classes'])
        with open(osp.join(tmp, META_FILE), 'w') as f:  # written last: marks a complete generation
            json.dump(record, f, indent=2, sort_keys=True)
            f.write('\n')
        # swap into place: old -> trash, tmp -> root, drop trash
        trash = None
        if osp.exists(root):
            trash = osp.join(parent, f'.{osp.basename(root)}.old-{os.getpid()}')
            shutil.rmtree(trash, ignore_errors=True)
            os.rename(root, trash)
        os.rename(tmp, root)
        if trash:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(f"shapes: {status} {task} data in {root} ({params['num_train']} train + {params['num_val']} val "
         f"images, {params['image_size']}px, {len(params['classes'])} classes) in {time.time() - t0:.1f}s", logger)
    return status


@contextlib.contextmanager
def _file_lock(root: str):
    """An exclusive ``fcntl`` lock on ``.<name>.lock`` next to ``root`` (no-op where fcntl is unavailable)."""
    parent = osp.dirname(osp.abspath(root))
    os.makedirs(parent, exist_ok=True)
    path = osp.join(parent, f'.{osp.basename(osp.abspath(root))}.lock')
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not Linux
        yield
        return
    with open(path, 'a') as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_generated(task: str, root: Optional[str] = None, params: Optional[dict] = None, logger='current') -> str:
    """Make sure ``root`` holds ``task`` data generated with ``params``; safe under distributed training.

    In a distributed run, rank 0 generates while the other ranks wait at a barrier; a rank that still finds
    the data missing afterwards (node-local storage) generates its own identical copy. Between independent
    processes, a file lock next to ``root`` serialises generation. Returns :func:`generate`'s status."""
    from mmengine.dist import barrier, get_dist_info
    root = root or DEFAULT_ROOTS[task]
    rank, world_size = get_dist_info()
    status = 'exists'
    if world_size > 1:
        if rank == 0:
            with _file_lock(root):
                status = generate(task, root, params, logger=logger)
        barrier()
        if rank == 0:
            return status
    if not is_up_to_date(task, root, params):
        with _file_lock(root):
            status = generate(task, root, params, logger=logger)
    return status
