import random

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from ..registry import HOOKS


@HOOKS.register_module()
class DeterministicResumeHook(Hook):
    """Reseed the Python, numpy and torch (CPU and CUDA) generators from (seed, iteration, rank) before every
    training iteration.

    MMEngine's resume restores weights, optimizer, schedulers and the sampler's epoch, but not the random
    generators, and the validation between epochs draws from them too (each DataLoader iterator takes a base
    seed from torch's generator). Making every draw a function of the iteration instead of the history means a
    run resumed from any checkpoint draws the same stochastic-depth / dropout masks and main-process
    augmentations as an uninterrupted run, for epoch- and iteration-based loops, with or without validation.
    (Dataloader workers are seeded by MMEngine's ``worker_init_fn`` and the sampler by ``seed + epoch``.)
    """

    priority = 'VERY_HIGH'

    def __init__(self, seed=None):
        self.seed = seed

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        base = self.seed if self.seed is not None else (runner.seed if runner.seed is not None else 0)
        s = (int(base) * 1_000_003 + runner.iter * 7919 + get_rank() * 104_729) % (2 ** 31)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)  # seeds CUDA generators too
