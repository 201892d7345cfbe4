"""Check that mmcv's compiled ops on this machine's GPU agree with their CPU implementations.

    python tools/check_mmcv_ops.py            # exit status 1 if any op disagrees

Detection and segmentation heads (RoIAlign in Mask R-CNN's RoI extractors and mask targets, NMS in the RPN and
the post-processing) run mmcv's CUDA kernels on the GPU and its C++ kernels on the CPU. A wheel built for other
GPU architectures, or a miscompiled kernel, need not raise: it can return zeros or garbage, and a detector then
trains its RPN but not its RoI heads. This compares, on random inputs: RoIAlign forward and input gradient
(aligned and not, sampling_ratio 0 and 2), RoIAlign on a channels-last map, nms keep sets and batched_nms.
"""
import argparse
import sys

import torch


def _rois(n, size, gen):
    xy = torch.rand(n, 2, generator=gen) * size * 0.8
    wh = torch.rand(n, 2, generator=gen) * size * 0.4 + 2
    batch = torch.randint(0, 2, (n, 1), generator=gen).float()
    return torch.cat([batch, xy, xy + wh], 1)


def check_roi_align(device, gen):
    from mmcv.ops import roi_align
    out = []
    x = torch.randn(2, 8, 32, 32, generator=gen)
    rois = _rois(64, 128, gen)
    for aligned in (True, False):
        for sr in (0, 2):
            xs = {}
            for dev in ('cpu', device):
                xi = x.clone().to(dev).requires_grad_()
                y = roi_align(xi, rois.to(dev), (7, 7), 1 / 4, sr, 'avg', aligned)
                y.backward(torch.ones_like(y))
                xs[dev] = (y.detach().cpu(), xi.grad.cpu())
            (y0, g0), (y1, g1) = xs['cpu'], xs[device]
            err = max(((y1 - y0).norm() / y0.norm()).item(), ((g1 - g0).norm() / g0.norm()).item())
            out.append((f'roi_align aligned={aligned} sampling_ratio={sr}', err, err < 1e-4 and y1.abs().sum() > 0))
    # a channels-last map (what convolutions return after a permute-based channel LayerNorm) must pool the same:
    # mmcv 2.1.0 reads raw memory as NCHW; vla_mm.compat makes the input contiguous first
    import vla_mm  # noqa: F401
    xd = x.to(device)
    y0 = roi_align(xd, rois.to(device), (7, 7), 1 / 4, 0, 'avg', True)
    y1 = roi_align(xd.contiguous(memory_format=torch.channels_last), rois.to(device), (7, 7), 1 / 4, 0, 'avg', True)
    err = ((y1 - y0).norm() / y0.norm()).item()
    out.append(('roi_align on a channels-last input (with vla_mm.compat)', err, err < 1e-6))
    return out


def check_nms(device, gen):
    from mmcv.ops import batched_nms, nms
    boxes = _rois(500, 128, gen)[:, 1:]
    scores = torch.rand(500, generator=gen)
    idx = torch.randint(0, 5, (500, ), generator=gen)
    _, k0 = nms(boxes, scores, 0.5)
    _, k1 = nms(boxes.to(device), scores.to(device), 0.5)
    same = set(k0.tolist()) == set(k1.cpu().tolist())
    _, b0 = batched_nms(boxes, scores, idx, dict(type='nms', iou_threshold=0.5))
    _, b1 = batched_nms(boxes.to(device), scores.to(device), idx.to(device), dict(type='nms', iou_threshold=0.5))
    bsame = set(b0.tolist()) == set(b1.cpu().tolist())
    return [(f'nms ({len(k0)} of 500 kept on cpu, {len(k1)} on {device})', 0.0 if same else 1.0, same),
            (f'batched_nms ({len(b0)} kept)', 0.0 if bsame else 1.0, bsame)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--device', default='cuda')
    a = p.parse_args()
    if a.device == 'cuda' and not torch.cuda.is_available():
        print('no CUDA device: nothing to compare')
        return 0
    import mmcv
    dev = 'cpu (self-check)'
    if a.device.startswith('cuda'):
        dev = f'{torch.cuda.get_device_name(0)} (sm_{"".join(map(str, torch.cuda.get_device_capability(0)))})'
    print(f'mmcv {mmcv.__version__}, torch {torch.__version__}, device {dev}')
    gen = torch.Generator().manual_seed(0)
    bad = 0
    for name, err, ok in check_roi_align(a.device, gen) + check_nms(a.device, gen):
        print(f'{"ok  " if ok else "FAIL"} {name}: relative difference {err:.2e}')
        bad += not ok
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
