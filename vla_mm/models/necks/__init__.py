"""Necks that turn backbone outputs into what OpenMMLab heads expect."""
from .simple_fpn import LayerNorm2d, SimpleFeaturePyramid

__all__ = ['LayerNorm2d', 'SimpleFeaturePyramid']
