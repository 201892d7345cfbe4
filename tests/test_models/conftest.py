"""Shared tiny fixtures of the model tests (CPU, 2-core CI: every model here has a few thousand parameters).

* ``tiny_arch``: an isotropic arch dict (32 wide, 2 blocks, 2 heads);
* ``build_backbone(**cfg)``: a registry-built, initialised backbone (IsotropicBackbone on a 32 px / patch-4 grid
  unless ``type`` / sizes are given);
* ``images``: a seeded ``[2, 3, 32, 32]`` batch;
* ``count_copies(fn)``: the tensor copies ``fn()`` makes (see :func:`count_copies`).
"""
import collections

import pytest
import torch

import vla_mm  # noqa: F401
from vla_mm.registry import MODELS

TINY_ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, mlp_ratio=2.0)


def build(**cfg):
    cfg = dict(dict(type='IsotropicBackbone', arch=TINY_ARCH, img_size=32, patch_size=4), **cfg)
    torch.manual_seed(0)
    m = MODELS.build(cfg)
    m.init_weights()
    return m


def _parents(event):
    names, p = [], event.cpu_parent
    while p is not None:
        names.append(p.name)
        p = p.cpu_parent
    return names


def count_copies(fn):
    """``Counter`` of the data copies ``fn()`` makes, forward and backward, by (shape, calling op): every
    ``aten::copy_`` that the profiler records, nested ones included (``contiguous()`` / ``clone`` / ``reshape`` of a
    non-viewable tensor / copies inside kernels such as LayerNorm's ``expect_contiguous``). Not counted: 0-d tensors
    (python scalars moved to a dtype) and ``addmm``'s fill of the output with the broadcast bias (how a biased
    linear layer starts on CPU; no activation is copied)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    copies = collections.Counter()
    for e in prof.events():
        if e.name != 'aten::copy_' or not e.input_shapes or not e.input_shapes[0]:
            continue
        parents = _parents(e)
        if parents and parents[0] == 'aten::addmm':
            continue
        caller = next((p for p in parents if p not in ('aten::clone', 'aten::contiguous', 'aten::to',
                                                        'aten::_to_copy')), '')
        copies[(tuple(e.input_shapes[0]), caller.replace('autograd::engine::evaluate_function: ', ''))] += 1
    return copies


@pytest.fixture
def tiny_arch():
    return dict(TINY_ARCH)


@pytest.fixture
def build_backbone():
    return build


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(name='count_copies')
def count_copies_fixture():
    return count_copies
