"""Scan routes: how a directional (1-D causal) mixer core visits the 2-D token grid, registered in
:data:`vla_mm.registry.SCANS` by short name (``uni``, ``flip``, ``random``, ``bi``, ``cross``,
``multi_head_2d`` / ``mh2d``) and built by :func:`build_scan`. See ``docs/scans.md``."""
from .base import DIRECTIONS, ScanPass, ScanRoute, build_scan, direction
from .bi import BiScan
from .cross import CrossScan
from .flip import FlipScan
from .multi_head_2d import MultiHead2DScan, head_groups
from .random_perm import RandomScan, seeded_permutation
from .uni import UniScan

__all__ = ['ScanPass', 'ScanRoute', 'DIRECTIONS', 'direction', 'build_scan', 'UniScan', 'FlipScan', 'RandomScan',
           'BiScan', 'CrossScan', 'MultiHead2DScan', 'head_groups', 'seeded_permutation']
