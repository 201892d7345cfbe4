import math
import random
import time

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop

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


@HOOKS.register_module()
class TimeBudgetHook(Hook):
    """Fit a training run into a wall-clock budget, and (optionally) own its learning-rate schedule.

    After ``warmup_iters`` iterations (compilation, autotuning, worker start-up) the hook times ``calib_iters``
    iterations; if the planned schedule does not fit ``seconds`` (less ``reserve`` for the final validation and
    the checkpoint), it shortens the loop: max iterations, or max epochs for epoch-based loops (whole epochs,
    and the validation interval is clamped so the last epoch validates). It stops the run when time is up.

    ``lr_plan`` makes the schedule follow the shortened length: the learning rate is set in closed form every
    iteration from the loop's current ``max_iters``, so a budget-shortened run gets the whole warm-up and the
    whole decay, with the peak it was configured for. (MMEngine's schedulers are recursive: rescaling them while
    they run skews the values; with ``lr_plan`` the config has no lr schedulers.) Keys:
    ``warmup`` (iterations, linear from ``start_factor``), ``decay`` ('cosine', 'linear' or 'poly' with
    ``power``) down to ``min_ratio`` of each param group's lr. Param-group lr ratios (layer-wise decay,
    ``paramwise_cfg``) are kept: each group's configured lr is its peak. Without ``lr_plan``, lr schedulers of
    the config are rescaled when the loop is shortened (fine before they start; approximate after).
    """

    priority = 'HIGHEST'  # before RuntimeInfoHook reads the lr for the log
    clock = staticmethod(time.time)  # wall clock (tests replace it)

    def __init__(self, seconds, warmup_iters=10, calib_iters=40, reserve=0.08, lr_plan=None):
        if seconds <= 0:
            raise ValueError(f'seconds must be > 0, got {seconds}')
        self.seconds, self.warmup, self.calib, self.reserve = float(seconds), warmup_iters, calib_iters, reserve
        self.lr_plan = None
        if lr_plan is not None:
            plan = dict(warmup=0, start_factor=1e-3, decay='cosine', power=1.0, min_ratio=0.0)
            unknown = set(lr_plan) - set(plan)
            if unknown:
                raise ValueError(f'lr_plan: unknown keys {sorted(unknown)}; known: {sorted(plan)}')
            plan.update(lr_plan)
            if plan['decay'] not in ('cosine', 'linear', 'poly'):
                raise ValueError(f"lr_plan decay must be 'cosine', 'linear' or 'poly', got {plan['decay']!r}")
            self.lr_plan = plan
        self.t0 = self.t_warm = None
        self.done = False

    # ------------------------------------------------------------------ learning rate in closed form
    def lr_factor(self, it, total):
        """Multiplier of the peak lr at iteration ``it`` (0-based) of a run of ``total`` iterations."""
        p = self.lr_plan
        w = min(int(p['warmup']), max(total - 1, 0))
        if it < w:
            return p['start_factor'] + (1 - p['start_factor']) * it / w
        span = max(total - w, 1)
        x = min(max((it - w) / span, 0.0), 1.0)
        if p['decay'] == 'cosine':
            d = 0.5 * (1 + math.cos(math.pi * x))
        else:
            d = (1 - x) ** (p['power'] if p['decay'] == 'poly' else 1.0)
        return p['min_ratio'] + (1 - p['min_ratio']) * d

    @staticmethod
    def _groups(runner):
        opt = runner.optim_wrapper
        if hasattr(opt, 'optim_wrappers'):  # OptimWrapperDict
            return [g for w in opt.optim_wrappers.values() for g in w.optimizer.param_groups]
        return opt.optimizer.param_groups

    def before_train(self, runner):
        self.t0 = self.clock()
        if self.lr_plan is not None:
            scheds = runner.param_schedulers or []
            scheds = [s for v in scheds.values() for s in v] if isinstance(scheds, dict) else scheds
            if any(getattr(s, 'param_name', None) == 'lr' for s in scheds):
                raise ValueError('TimeBudgetHook(lr_plan=...) owns the learning rate: remove the lr schedulers '
                                 'of the config (param_scheduler = [])')
            for g in self._groups(runner):
                g.setdefault('budget_peak_lr', g['lr'])  # kept in the optimizer state: resume keeps the peaks

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.lr_plan is not None:
            f = self.lr_factor(runner.iter, runner.train_loop.max_iters)
            for g in self._groups(runner):
                g['lr'] = g['budget_peak_lr'] * f

    # ------------------------------------------------------------------ the budget
    def _rescale(self, runner, f):
        for s in runner.param_schedulers if isinstance(runner.param_schedulers, list) else []:
            if getattr(s, 'by_epoch', False):
                continue
            s.begin, s.end = int(s.begin * f), max(int(s.begin * f) + 2, int(min(s.end, 10 ** 12) * f))
            if hasattr(s, 'total_iters'):
                s.total_iters = s.end - s.begin - 1
            if hasattr(s, 'T_max'):
                s.T_max = s.end - s.begin

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        it = runner.iter + 1
        now = self.clock()
        loop = runner.train_loop
        epoch_based = isinstance(loop, EpochBasedTrainLoop)  # (IterBasedTrainLoop has _max_epochs = 1 too)
        if it == self.warmup:
            self.t_warm = now
        if not self.done and self.t_warm is not None and it == self.warmup + self.calib:
            self.done = True
            per_iter = (now - self.t_warm) / self.calib
            left = self.seconds * (1 - self.reserve) - (now - self.t0)
            possible = it + max(1, int(left / per_iter))
            planned = loop.max_iters
            if possible < planned:
                if epoch_based:
                    ipe = len(loop.dataloader)
                    epochs = max(runner.epoch + 1, possible // ipe)
                    f = epochs * ipe / planned
                    loop._max_epochs = epochs
                    loop._max_iters = epochs * ipe
                    loop.val_interval = min(loop.val_interval, epochs)
                    if loop.val_begin > epochs:
                        loop.val_begin = epochs
                else:
                    f = possible / planned
                    loop._max_iters = possible
                    loop.val_interval = min(loop.val_interval, possible)
                if self.lr_plan is None:
                    self._rescale(runner, f)
                runner.logger.info(f'TimeBudgetHook: {per_iter * 1000:.1f} ms/iter; schedule shortened from '
                                   f'{planned} to {loop.max_iters} iterations to fit {self.seconds:.0f} s')
            else:
                runner.logger.info(f'TimeBudgetHook: {per_iter * 1000:.1f} ms/iter; the schedule fits')
        if now - self.t0 > self.seconds and not epoch_based and loop._max_iters > it:
            runner.logger.info('TimeBudgetHook: time is up, stopping after this iteration')
            loop._max_iters = it

    def after_train_epoch(self, runner):
        loop = runner.train_loop
        if isinstance(loop, EpochBasedTrainLoop) and self.clock() - self.t0 > self.seconds and loop._max_epochs > runner.epoch + 1:
            runner.logger.info('TimeBudgetHook: time is up, stopping after this epoch')
            loop._max_epochs = runner.epoch + 1
            loop._max_iters = loop._max_epochs * len(loop.dataloader)


@HOOKS.register_module()
class GlobalMeanLogHook(Hook):
    """Log the mean of every rank's losses instead of rank 0's alone.

    MMEngine logs the loss values of rank 0's own mini-batch, so the curve of an N-process run is noisier than,
    and not comparable with, a 1-process run at N x the batch. This hook all-reduces the scalar tensors of the
    train step's outputs (``loss``, ``loss_*``, accuracies) before :class:`~mmengine.hooks.RuntimeInfoHook`
    records them. It changes nothing but the logged values, and costs one small all-reduce per iteration.
    """
    priority = 'HIGHEST'  # before RuntimeInfoHook (VERY_HIGH) reads the outputs

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        from mmengine.dist import all_reduce, get_world_size
        if not outputs or get_world_size() == 1:
            return
        keys = [k for k, v in outputs.items() if torch.is_tensor(v) and v.numel() == 1]
        if not keys:
            return
        vec = torch.stack([outputs[k].detach().float().reshape(()) for k in keys])
        all_reduce(vec, op='mean')
        for k, v in zip(keys, vec):
            outputs[k] = v.to(outputs[k].dtype)
