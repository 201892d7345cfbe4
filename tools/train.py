#!/usr/bin/env python
"""Train a model from a config on MMEngine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--cfg-options k=v ...]
                                 [--launcher none|pytorch|slurm]

Bad input (missing config, unknown model type, --cfg-options key that does not exist, missing checkpoint or
dataset directory) is reported as one line with exit code 2.
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import DictAction


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Train a vla_mm model')
    p.add_argument('config', help='config file path')
    p.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/<config name>)')
    p.add_argument('--resume', nargs='?', type=str, const='auto',
                   help='resume from CKPT, or from the latest checkpoint in the work dir if no CKPT is given')
    p.add_argument('--amp', action='store_true', help='automatic mixed precision training')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   help="override config entries, e.g. 'train_cfg.max_epochs=2'; each key must exist "
                        "(prefix a key with '+' to add a new one)")
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_cfg(args):
    from vla_mm.utils.cli import (UserError, check_checkpoint, check_data_roots, load_config, set_work_dir,
                                  use_cpu_backend)
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    use_cpu_backend(cfg)
    set_work_dir(cfg, args.config, args.work_dir)
    if args.amp:
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('AMP is already enabled in the config', file=sys.stderr)
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
        last = osp.join(cfg.work_dir, 'last_checkpoint')
        if not osp.isfile(last):
            print(f'--resume: no checkpoint in {cfg.work_dir} yet; training from scratch', file=sys.stderr)
    elif args.resume is not None:
        check_checkpoint(args.resume, 'resume checkpoint')
        cfg.resume, cfg.load_from = True, args.resume
    if cfg.get('load_from') and not cfg.get('resume'):
        check_checkpoint(cfg.load_from, 'load_from checkpoint')
    check_data_roots(cfg)
    if not cfg.get('train_dataloader'):
        raise UserError(f'config {args.config} has no train_dataloader: it cannot be trained')
    return cfg


def main(argv=None):
    args = parse_args(argv)
    import vla_mm  # noqa: F401  (compatibility fixes + registration)
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from vla_mm.utils.cli import UserError, close_distributed, explain_exception, fail
    try:
        cfg = build_cfg(args)
        runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
        runner.train()
    except UserError as e:
        fail(str(e))
    except Exception as e:
        msg = explain_exception(e)
        if msg is None:
            raise
        fail(msg)
    print(f'checkpoints and logs: {osp.abspath(runner.work_dir)}')
    print(f'last checkpoint: {runner.cfg.get("work_dir")}/{_last_checkpoint(runner.work_dir)}')
    close_distributed()


def _last_checkpoint(work_dir):
    path = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(path):
        with open(path) as f:
            return osp.basename(f.read().strip())
    return '(none saved)'


if __name__ == '__main__':
    main()
