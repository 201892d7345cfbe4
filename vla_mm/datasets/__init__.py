"""Data sets of vla_mm: the bundled deterministic synthetic "shapes" data (classification / ADE20K-style
segmentation / COCO detection), generated on first use. Importing this package registers
``ShapesClsDataset``, ``ShapesSegDataset`` and ``ShapesCocoDataset`` in ``vla_mm.registry.DATASETS``."""
from . import shapes
from .shapes import (ALL_CLASSES, DEFAULT_PARAMS, DEFAULT_ROOTS, ShapesParamError, ensure_generated, generate,
                     make_cls_image, make_scene, resolve_params)
from .shapes_datasets import ShapesClsDataset, ShapesCocoDataset, ShapesSegDataset

__all__ = ['shapes', 'ALL_CLASSES', 'DEFAULT_PARAMS', 'DEFAULT_ROOTS', 'ShapesParamError', 'ensure_generated',
           'generate', 'make_cls_image', 'make_scene', 'resolve_params', 'ShapesClsDataset', 'ShapesSegDataset',
           'ShapesCocoDataset']
