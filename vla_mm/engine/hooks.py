import random

import numpy as np
import torch
from mmengine.hooks import Hook

from ..registry import HOOKS


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save the random-number-generator states in every checkpoint and restore them on ``--resume``.

    MMEngine restores weights, optimizer, schedulers and the sampler's epoch, but not the Python / numpy /
    torch (CPU and CUDA) generators, so stochastic depth, dropout and main-process augmentations draw other
    numbers after a resume. With this hook an interrupted run resumed from a checkpoint ends with the same
    weights as an uninterrupted one (single process, deterministic kernels; in distributed runs each rank's
    generator state is saved in its own checkpoint entry only for rank 0 — other ranks reseed).
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint):
        state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state['cuda'] = torch.cuda.get_rng_state_all()
        # plain containers only: loadable with weights_only=True
        state['python'] = [state['python'][0], list(state['python'][1]), state['python'][2]]
        np_state = state['numpy']
        state['numpy'] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                          int(np_state[3]), float(np_state[4])]
        checkpoint['rng_state'] = state

    def after_load_checkpoint(self, runner, checkpoint):
        state = checkpoint.get('rng_state')
        if not state or not runner._resume:
            return
        version, internal, gauss = state['python']
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = state['numpy']
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state['torch'])
        if 'cuda' in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state['cuda'])
