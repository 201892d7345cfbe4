import random

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from ..registry import HOOKS


@HOOKS.register_module()
class DeterministicResumeHook(Hook):
    """Reseed the Python, numpy and torch (CPU and CUDA) generators from (seed, epoch or iteration, rank) before
    every training epoch and iteration.

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

    def _reseed(self, runner, step, salt):
        base = self.seed if self.seed is not None else (runner.seed if runner.seed is not None else 0)
        s = (int(base) * 1_000_003 + step * 7919 + get_rank() * 104_729 + salt) % (2 ** 31)
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)  # seeds CUDA generators too

    def before_train_epoch(self, runner):
        # the epoch's first batch is drawn (main-process augmentations, the DataLoader iterator's base seed)
        # before before_train_iter runs: seed that from the epoch
        self._reseed(runner, runner.epoch, salt=15_485_863)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        # covers this iteration's model randomness and the fetch of the next batch
        self._reseed(runner, runner.iter, salt=0)
