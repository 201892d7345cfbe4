"""OpenMMLab dataset classes over the synthetic shapes data, generated on first use.

Each class takes the generator parameters as ``generate=dict(...)`` (see
:data:`vla_mm.datasets.shapes.DEFAULT_PARAMS`; omitted keys keep their defaults), makes sure ``data_root``
holds data generated with exactly those parameters (generating or regenerating it when not; rank 0 only in
distributed runs) and then loads it with the stock OpenMMLab base class. ``generate=False`` skips the check
and loads whatever is in ``data_root``.

``split='train'|'val'`` picks the default ``ann_file`` / ``data_prefix``; pass them explicitly to override.
Pipelines are built by MMEngine in the current default scope, so configs set ``default_scope='mmpretrain'``
(``'mmseg'``, ``'mmdet'``) and name that library's transforms without prefix, and name these classes
``type='vla_mm.ShapesClsDataset'`` etc.
"""
import os.path as osp
from typing import Optional, Union

from mmdet.datasets import CocoDataset
from mmpretrain.datasets import CustomDataset
from mmseg.datasets import BaseSegDataset

from vla_mm.registry import DATASETS
from . import shapes as S

__all__ = ['ShapesClsDataset', 'ShapesSegDataset', 'ShapesCocoDataset']


def _check_split(split: str):
    if split not in S.SPLITS:
        raise ValueError(f"split must be one of {S.SPLITS}, got {split!r}")


def _prepare(task: str, data_root: Optional[str], generate: Union[dict, bool, None]):
    """Generate when needed; return (data_root, classes of the data)."""
    data_root = data_root or S.DEFAULT_ROOTS[task]
    if generate is False:
        meta = S.read_meta(data_root)
        classes = (meta or {}).get('params', {}).get('classes') or list(S.ALL_CLASSES)
        return data_root, tuple(classes)
    if generate is True:
        generate = None
    if generate is not None and not isinstance(generate, dict):
        raise TypeError(f'generate must be a dict of generator parameters, None or False, got {generate!r}')
    params = S.resolve_params(task, generate)
    S.ensure_generated(task, data_root, params)
    return data_root, tuple(params['classes'])


def _metainfo(metainfo: Optional[dict], classes: tuple, palette: list, name: str) -> dict:
    metainfo = dict(metainfo or {})
    given = metainfo.get('classes')
    if given is not None and tuple(given) != classes:
        raise ValueError(f'{name}: metainfo classes {tuple(given)} differ from the classes of the generated data '
                         f'{classes}; choose a subset with generate=dict(classes=[...]) instead')
    metainfo['classes'] = classes
    metainfo.setdefault('palette', palette)
    return metainfo


@DATASETS.register_module()
class ShapesClsDataset(CustomDataset):
    """Shapes classification in the ImageNet layout (``<root>/{train,val}/<class>/<id>.png`` + ``meta/*.txt``).

    Args:
        data_root: default ``data/shapes/cls`` (relative to the current directory).
        split: ``'train'`` or ``'val'``; sets the default ``ann_file`` (``meta/<split>.txt``) and
            ``data_prefix`` (``<split>``).
        generate: generator parameters (e.g. ``dict(image_size=64, num_train=2000, num_val=400, seed=0)``),
            None for the defaults, False to load without checking/generating.
        **kwargs: passed to :class:`mmpretrain.datasets.CustomDataset` (pipeline, test_mode, ...).
    """
    METAINFO = dict(classes=S.ALL_CLASSES, palette=[list(p) for p in S.ALL_PALETTE])

    def __init__(self, data_root: Optional[str] = None, split: str = 'train',
                 generate: Union[dict, bool, None] = None, ann_file: Optional[str] = None,
                 data_prefix: Union[str, dict, None] = None, metainfo: Optional[dict] = None, **kwargs):
        _check_split(split)
        data_root, classes = _prepare('cls', data_root, generate)
        self.split = split
        super().__init__(
            data_root=data_root,
            ann_file=f'meta/{split}.txt' if ann_file is None else ann_file,
            data_prefix=S.SPLIT_DIRS['cls'][split] if data_prefix is None else data_prefix,
            metainfo=_metainfo(metainfo, classes, [list(p) for p in S.class_palette(classes)], type(self).__name__),
            **kwargs)


@DATASETS.register_module()
class ShapesSegDataset(BaseSegDataset):
    """Shapes semantic segmentation in the ADE20K layout.

    ``images/{training,validation}/<id>.jpg`` + ``annotations/{training,validation}/<id>.png``; label 0 is
    the background (a real class: ``reduce_zero_label=False``), 1..C the shape classes, so
    ``num_classes = C + 1`` (7 with all classes).

    Args:
        data_root: default ``data/shapes/seg``.
        split: ``'train'`` or ``'val'`` (folders ``training`` / ``validation``).
        generate: generator parameters, None for defaults, False to load without checking/generating.
        **kwargs: passed to :class:`mmseg.datasets.BaseSegDataset`.
    """
    METAINFO = dict(classes=('background',) + S.ALL_CLASSES,
                    palette=[list(S.BACKGROUND_PALETTE)] + [list(p) for p in S.ALL_PALETTE])

    def __init__(self, data_root: Optional[str] = None, split: str = 'train',
                 generate: Union[dict, bool, None] = None, data_prefix: Optional[dict] = None,
                 metainfo: Optional[dict] = None, img_suffix: str = '.jpg', seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = False, **kwargs):
        _check_split(split)
        data_root, classes = _prepare('seg', data_root, generate)
        self.split = split
        d = S.SPLIT_DIRS['seg'][split]
        palette = [list(S.BACKGROUND_PALETTE)] + [list(p) for p in S.class_palette(classes)]
        super().__init__(
            data_root=data_root,
            data_prefix=dict(img_path=f'images/{d}', seg_map_path=f'annotations/{d}')
            if data_prefix is None else data_prefix,
            metainfo=_metainfo(metainfo, ('background',) + classes, palette, type(self).__name__),
            img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label,
            **kwargs)

    @classmethod
    def get_label_map(cls, new_classes=None):
        # A class subset is generated with its own contiguous label ids already: never remap.
        return None


@DATASETS.register_module()
class ShapesCocoDataset(CocoDataset):
    """Shapes detection / instance segmentation in the COCO layout.

    ``{train2017,val2017}/<id>.jpg`` + ``annotations/instances_{train2017,val2017}.json`` (category ids 1..C,
    masks as exact compressed RLE).

    Args:
        data_root: default ``data/shapes/det``.
        split: ``'train'`` or ``'val'``.
        generate: generator parameters, None for defaults, False to load without checking/generating.
        **kwargs: passed to :class:`mmdet.datasets.CocoDataset` (pipeline, filter_cfg, test_mode, ...).
    """
    METAINFO = dict(classes=S.ALL_CLASSES, palette=[tuple(p) for p in S.ALL_PALETTE])

    def __init__(self, data_root: Optional[str] = None, split: str = 'train',
                 generate: Union[dict, bool, None] = None, ann_file: Optional[str] = None,
                 data_prefix: Optional[dict] = None, metainfo: Optional[dict] = None, **kwargs):
        _check_split(split)
        data_root, classes = _prepare('det', data_root, generate)
        self.split = split
        d = S.SPLIT_DIRS['det'][split]
        super().__init__(
            data_root=data_root,
            ann_file=osp.join('annotations', f'instances_{d}.json') if ann_file is None else ann_file,
            data_prefix=dict(img=f'{d}/') if data_prefix is None else data_prefix,
            metainfo=_metainfo(metainfo, classes, [tuple(p) for p in S.class_palette(classes)],
                               type(self).__name__),
            **kwargs)
