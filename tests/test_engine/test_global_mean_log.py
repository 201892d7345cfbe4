"""vla_mm.GlobalMeanLogHook: with 2 gloo processes the logged scalars become the mean over ranks (what a 1-process
run at double batch would log); non-scalar outputs and single-process runs are left alone."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vla_mm.engine import GlobalMeanLogHook


def _port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank, port, q):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        vec = torch.arange(3.0) + rank
        outputs = dict(loss=torch.tensor(1.0 + 2 * rank), loss_cls=torch.tensor(10.0 * (rank + 1)),
                       acc=torch.tensor(50.0 + rank, dtype=torch.float64), vec=vec)
        GlobalMeanLogHook().after_train_iter(None, 0, None, outputs)
        q.put((rank, {k: v.tolist() for k, v in outputs.items()}, str(outputs['acc'].dtype)))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_log_the_mean():
    ctx = mp.get_context('spawn')
    q = ctx.Queue()
    mp.spawn(_worker, args=(_port(), q), nprocs=2, join=True)
    got = dict((r, (o, dt)) for r, o, dt in (q.get(timeout=60) for _ in range(2)))
    for rank in (0, 1):
        out, dtype = got[rank]
        assert out['loss'] == 2.0            # (1 + 3) / 2 on both ranks, not rank 0's 1.0
        assert out['loss_cls'] == 15.0
        assert out['acc'] == 50.5 and dtype == 'torch.float64'  # dtype kept
        assert out['vec'] == [0.0 + rank, 1.0 + rank, 2.0 + rank]  # not a scalar: untouched


def test_single_process_is_a_no_op():
    outputs = dict(loss=torch.tensor(3.0))
    GlobalMeanLogHook().after_train_iter(None, 0, None, outputs)
    assert outputs['loss'].item() == 3.0
    GlobalMeanLogHook().after_train_iter(None, 0, None, None)  # no outputs: nothing to do


def test_priority_runs_before_runtime_info_hook():
    from mmengine.hooks import RuntimeInfoHook
    from mmengine.runner.priority import get_priority
    assert get_priority(GlobalMeanLogHook.priority) < get_priority(RuntimeInfoHook.priority)
