"""Hooks that the tool tests load into subprocess runs through ``custom_imports`` (test instrumentation only)."""
import os

from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class InterruptAfterEpochHook(Hook):
    """Kill the run right after epoch ``epoch`` (1-based, as ``epoch_<n>.pth``) was checkpointed, as a crash or a
    pre-emption would. (``runner.epoch`` is still 0-based during ``after_train_epoch``.)"""

    priority = 'LOWEST'  # after CheckpointHook

    def __init__(self, epoch):
        self.epoch = epoch

    def after_train_epoch(self, runner):
        if runner.epoch + 1 == self.epoch:
            os._exit(3)


@HOOKS.register_module()
class RankMarkerHook(Hook):
    """Each rank writes ``<dir>/rank<r>.done`` when its training ends."""

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def after_run(self, runner):
        with open(os.path.join(self.out_dir, f'rank{get_rank()}.done'), 'w') as f:
            f.write(str(runner.iter))
