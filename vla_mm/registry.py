"""The ``vla_mm`` registry scope.

Every registry here is a child of MMEngine's root registry of the same kind, so a module registered once is
found from mmpretrain, mmsegmentation and mmdet configs alike as ``type='vla_mm.<Name>'`` (with
``custom_imports=dict(imports=['vla_mm'])``), and from configs whose ``default_scope='vla_mm'`` by plain name.
Token mixers and scan routes have registries of their own (they are parts of a backbone, not of a runner).
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='vla_mm', locations=['vla_mm.models'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='vla_mm', locations=['vla_mm.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='vla_mm', locations=['vla_mm.datasets'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='vla_mm', locations=['vla_mm.engine'])
# no metric of vla_mm's own yet: the package import registers whatever there is
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='vla_mm', locations=['vla_mm'])

# Parts of a backbone: a token mixer (``forward(x [B, N, C], ctx) -> [B, N, C]``, vla_mm/models/mixers/base.py)
# and a 2D->1D scan route (vla_mm/models/scans/).
MIXERS = Registry('token mixer', scope='vla_mm', locations=['vla_mm.models.mixers'])
SCANS = Registry('scan route', scope='vla_mm', locations=['vla_mm.models.scans'])
