#!/usr/bin/env python
"""Evaluate a checkpoint with a config's test loop and metrics.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--cfg-options k=v ...]
                                           [--launcher none|pytorch|slurm]

Prints the metrics and writes them as JSON to ``<work_dir>/test_metrics.json``; ``--out FILE.pkl`` also dumps
the per-sample predictions (MMEngine's DumpResults). Bad input is one line with exit code 2.
"""
import argparse
import json
import os
import os.path as osp

from mmengine.config import DictAction


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Test a vla_mm model')
    p.add_argument('config', help='config file path')
    p.add_argument('checkpoint', help='checkpoint file')
    p.add_argument('--work-dir', help='where logs and metrics go (default: work_dirs/<config name>)')
    p.add_argument('--out', help='dump per-sample predictions to this .pkl file')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   help="override config entries; each key must exist (prefix '+' to add a new one)")
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    import vla_mm  # noqa: F401
    from mmengine.dist import is_main_process
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from vla_mm.utils.cli import (UserError, check_checkpoint, check_data_roots, close_distributed, explain_exception,
                                  fail, load_config, set_work_dir, to_plain, use_cpu_backend)
    try:
        cfg = load_config(args.config, args.cfg_options)
        check_checkpoint(args.checkpoint)
        cfg.launcher = args.launcher
        use_cpu_backend(cfg)
        cfg.load_from = args.checkpoint
        cfg.resume = False
        set_work_dir(cfg, args.config, args.work_dir)
        if not cfg.get('test_dataloader'):
            raise UserError(f'config {args.config} has no test_dataloader')
        check_data_roots(cfg, ('test_dataloader',))
        if args.out:
            if not args.out.endswith(('.pkl', '.pickle')):
                raise UserError(f'--out must be a .pkl file, got {args.out}')
            dump = dict(type='DumpResults', out_file_path=args.out)
            ev = cfg.test_evaluator
            cfg.test_evaluator = list(ev) + [dump] if isinstance(ev, (list, tuple)) else [ev, dump]
        runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
        metrics = runner.test()
    except UserError as e:
        fail(str(e))
    except Exception as e:
        msg = explain_exception(e)
        if msg is None:
            raise
        fail(msg)
    if is_main_process():
        out = osp.join(runner.work_dir, 'test_metrics.json')
        with open(out, 'w') as f:
            json.dump(dict(config=args.config, checkpoint=args.checkpoint, metrics=to_plain(metrics)), f, indent=2)
        print(json.dumps(to_plain(metrics)))
        print(f'metrics written to {osp.abspath(out)}')
    close_distributed()


if __name__ == '__main__':
    main()
