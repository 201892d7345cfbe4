"""vla_mm.TimeBudgetHook: shortens a run to a wall-clock budget and owns the lr schedule in closed form."""
import math

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

import vla_mm  # noqa: F401
from vla_mm.engine import TimeBudgetHook


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 1)
        self.b = nn.Linear(2, 1)

    def forward(self, x, y=None, mode='loss'):
        out = self.a(x) + self.b(x)
        return dict(loss=((out - y) ** 2).mean()) if mode == 'loss' else out

    def train_step(self, data, optim_wrapper):
        loss = self(**data)['loss']
        optim_wrapper.update_params(loss)
        return dict(loss=loss)


class _Data(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(x=torch.ones(2) * i, y=torch.ones(1))


class _Record(Hook):
    priority = 'LOWEST'

    def __init__(self):
        self.lrs = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.lrs.append([g['lr'] for g in runner.optim_wrapper.optimizer.param_groups])


@pytest.fixture(autouse=True)
def _keep_default_scope():
    """A Runner makes its scope the current DefaultScope (process-global): undo that, so later tests that build
    vla_mm modules by bare name still resolve them in their own scope."""
    from mmengine.registry import DefaultScope
    before = dict(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(before)


def _runner(tmp_path, budget_hook, max_iters=100, by_epoch=False, scheduler=None):
    rec = _Record()
    loop = dict(type='EpochBasedTrainLoop', max_epochs=max_iters // 4) if by_epoch else \
        dict(type='IterBasedTrainLoop', max_iters=max_iters)
    r = Runner(model=_Toy(), work_dir=str(tmp_path),
               train_dataloader=dict(dataset=_Data(), batch_size=2, num_workers=0,
                                     sampler=dict(type='DefaultSampler', shuffle=False),
                                     collate_fn=dict(type='default_collate')),
               optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1),
                                  paramwise_cfg=dict(custom_keys={'b.': dict(lr_mult=0.5)})),
               param_scheduler=scheduler, train_cfg=loop, custom_hooks=[budget_hook, rec],
               default_hooks=dict(checkpoint=None, logger=dict(type='LoggerHook', interval=1000)))
    return r, rec


def _fake_clock(hook):
    """One second per reading (the hook reads the clock once per iteration): n iterations 'take' n seconds."""
    t = [0.0]

    def now():
        t[0] += 1.0
        return t[0]
    hook.clock = now
    return hook


def test_lr_plan_closed_form_follows_the_shortened_schedule(tmp_path):
    hook = TimeBudgetHook(seconds=40, warmup_iters=2, calib_iters=3, reserve=0.0,
                          lr_plan=dict(warmup=4, start_factor=0.1, decay='cosine', min_ratio=0.0))
    runner, rec = _runner(tmp_path, _fake_clock(hook), max_iters=100)
    runner.train()
    n = len(rec.lrs)
    # calibrated at iteration 5 (1 s per iteration): 5 + (40 - 5) = 40 iterations fit; the clock stops it there
    assert runner.train_loop.max_iters == n
    assert 30 <= n <= 41
    peaks = [g['budget_peak_lr'] for g in runner.optim_wrapper.optimizer.param_groups]
    assert sorted(set(peaks)) == pytest.approx([0.05, 0.1])  # lr_mult of 'b.' kept as the groups' peaks
    for it, lrs in enumerate(rec.lrs):
        assert lrs == pytest.approx([p * hook.lr_factor(it, n) for p in peaks])
    assert rec.lrs[0][0] == pytest.approx(0.1 * 0.1)  # warm-up starts at start_factor
    assert rec.lrs[4][0] == pytest.approx(0.1)  # the configured peak is reached
    assert rec.lrs[-1][0] < 0.1 * 0.01  # and the whole decay is run within the budget
    # a run that fits keeps its length; the closed form decays to min_ratio at the end
    assert hook.lr_factor(99, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 95 / 96)))


def test_epoch_loop_is_shortened_to_whole_epochs(tmp_path):
    hook = TimeBudgetHook(seconds=30, warmup_iters=2, calib_iters=3, reserve=0.0, lr_plan=dict(warmup=2))
    runner, rec = _runner(tmp_path, _fake_clock(hook), max_iters=400, by_epoch=True)  # 100 epochs of 4 iterations
    runner.train()
    assert runner.train_loop.max_epochs < 100
    assert len(rec.lrs) == runner.train_loop.max_epochs * 4
    assert len(rec.lrs) <= 32


def test_lr_plan_refuses_lr_schedulers_and_bad_keys(tmp_path):
    hook = TimeBudgetHook(seconds=30, lr_plan=dict(warmup=2))
    runner, _ = _runner(tmp_path, _fake_clock(hook), scheduler=dict(type='LinearLR', start_factor=0.1, by_epoch=False, end=5))
    with pytest.raises(ValueError, match='owns the learning rate'):
        runner.train()
    with pytest.raises(ValueError, match='unknown keys'):
        TimeBudgetHook(seconds=10, lr_plan=dict(warmpu=3))
    with pytest.raises(ValueError, match='decay'):
        TimeBudgetHook(seconds=10, lr_plan=dict(decay='step'))


def test_without_lr_plan_the_schedule_is_left_to_the_config(tmp_path):
    hook = TimeBudgetHook(seconds=1e9, warmup_iters=2, calib_iters=3)
    runner, rec = _runner(tmp_path, _fake_clock(hook), max_iters=12)
    runner.train()
    assert len(rec.lrs) == 12  # fits: not shortened
    assert all(sorted(set(lrs)) == [0.05, 0.1] for lrs in rec.lrs)  # no plan, no scheduler: constant
