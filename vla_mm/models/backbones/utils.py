"""What the backbone bases share that is not a layer."""
import torch.nn as nn

__all__ = ['resolve_arch', 'freeze', 'FrozenStagesMixin']

_NORMS = (nn.LayerNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def resolve_arch(arch, zoo, required):
    """``arch`` as a dict: a name of ``zoo`` (case-insensitive) or a dict holding at least ``required``."""
    if isinstance(arch, str):
        if arch.lower() not in zoo:
            raise KeyError(f'arch {arch!r} is not one of {sorted(set(zoo))}')
        arch = zoo[arch.lower()]
    missing = set(required) - set(arch)
    if missing:
        raise KeyError(f'custom arch is missing {sorted(missing)}')
    return dict(arch)


def freeze(parts):
    """Frozen stages: modules go to eval mode without gradients; bare parameters lose their gradient."""
    for m in parts:
        if isinstance(m, nn.Parameter):
            m.requires_grad = False
        else:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False


class FrozenStagesMixin:
    """``train()`` of a backbone with ``frozen_stages`` (its ``_freeze_stages``) and ``norm_eval`` (norms stay in
    eval mode while training, as OpenMMLab backbones do)."""

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _NORMS):
                    m.eval()
        return self
