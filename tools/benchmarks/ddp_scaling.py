"""DDP training throughput (images/s) of a config's model on synthetic batches, for 1..N GPUs.

    torchrun --nproc_per_node=2 tools/benchmarks/ddp_scaling.py CONFIG --batch 64 --size 224 --json out.json

Each rank builds the config's model (MODELS registry, so mmpretrain classifiers and mmseg segmentors alike),
wraps it in DistributedDataParallel, and times forward + backward + AdamW step under bf16 autocast on a fixed
synthetic batch (no data loading: this isolates model compute and the gradient all-reduce). The per-rank batch
is fixed, so ideal scaling doubles images/s with 2 GPUs. Rank 0 appends one JSON line to --json.
Without CUDA it runs on the CPU with gloo (tiny sizes, for the test).
"""
import argparse
import ast
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # common.py (PYTHONSAFEPATH=1 leaves it out)
from common import ROOT, describe_env, synchronize  # noqa: E402

sys.path.insert(0, ROOT)


def batch(model, n, size, device):
    import torch
    x = torch.randn(n, 3, size, size, device=device)
    name = type(model).__name__
    if name == 'EncoderDecoder':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        ncls = model.decode_head.num_classes
        samples = []
        for _ in range(n):
            s = SegDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size)))
            s.gt_sem_seg = PixelData(data=torch.randint(0, ncls, (1, size, size), device=device))
            samples.append(s)
        return x, samples
    from mmpretrain.structures import DataSample
    ncls = model.head.num_classes
    # labels on the model's device (label smoothing builds its one-hot targets from them)
    return x, [DataSample().set_gt_label(int(torch.randint(0, ncls, ()))).to(device) for _ in range(n)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument('config')
    p.add_argument('--batch', type=int, default=64, help='images per GPU')
    p.add_argument('--size', type=int, default=224)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--iters', type=int, default=20)
    p.add_argument('--json', required=True)
    p.add_argument('--cfg-options', nargs='*', default=[], help='key=value overrides (python literals)')
    a = p.parse_args()
    import torch
    import torch.distributed as dist
    from mmengine.config import Config
    import vla_mm  # noqa: F401  (registers backbones, applies the compatibility fixes)
    from mmengine.registry import MODELS, init_default_scope

    cuda = torch.cuda.is_available()
    dist.init_process_group('nccl' if cuda else 'gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0))) if cuda else torch.device('cpu')
    if cuda:
        torch.cuda.set_device(device)
    cfg = Config.fromfile(a.config)
    for kv in a.cfg_options:
        k, v = kv.split('=', 1)
        cfg.merge_from_dict({k: ast.literal_eval(v)})
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model = MODELS.build(cfg.model)
    if not cuda:  # SyncBatchNorm (the ADE20K UperNet heads) needs CUDA
        from mmengine.model import revert_sync_batchnorm
        model = revert_sync_batchnorm(model)
    model = model.to(device)
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None,
                                                    find_unused_parameters=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, samples = batch(model, a.batch, a.size, device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            losses = ddp(x, samples, mode='loss')
        loss = sum(v.sum() for k, v in losses.items() if 'loss' in k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for _ in range(a.warmup):
        step()
    synchronize(device)
    dist.barrier()
    t = time.perf_counter()  # all ranks together: the slowest rank and the all-reduces set the time
    for _ in range(a.iters):
        loss = step()
    synchronize(device)
    dist.barrier()
    dt = (time.perf_counter() - t) / a.iters
    if rank == 0:
        rec = dict(config=os.path.relpath(a.config, ROOT), world=world, batch_per_gpu=a.batch, size=a.size,
                   ms_per_iter=round(dt * 1e3, 2), images_per_s=round(world * a.batch / dt, 1),
                   params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                   loss=float(loss), device=describe_env(extra=())['device'],
                   peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)
        with open(a.json, 'a') as f:
            f.write(json.dumps(rec) + '\n')
        print(json.dumps(rec), flush=True)
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
