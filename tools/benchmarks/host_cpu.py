"""Host time of our ops' Triton path without a GPU: every Triton launch skipped, CPU tensors.

What a call costs the host besides its launches (our Python, torch's allocations and autograd): the part of
``ops.py --host``'s "no launch" column that needs no device, so a host-side change can be measured where it is
made. Each op is timed beside a minimal ``autograd.Function`` that allocates the same outputs and gradients and
launches nothing (the floor of any Python op).

    env -u TRITON_INTERPRET python tools/benchmarks/host_cpu.py --out work_dirs/host_cpu --ops linear_attn,layer_norm
"""
import argparse
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import common  # noqa: E402
import ops as op_bench  # noqa: E402

DEFAULT_OPS = 'linear_attn,layer_norm,add_layer_norm,short_conv,sum_rows,delta_rule,gla_vector,hgrn'


class _Floor(torch.autograd.Function):
    """Allocates the op's outputs (forward) and one gradient per differentiable input (backward), nothing else."""

    @staticmethod
    def forward(ctx, out_like, *inputs):
        ctx.save_for_backward(*inputs)
        return torch.empty_like(out_like)

    @staticmethod
    def backward(ctx, grad):
        return (None, *(torch.empty_like(t) for t in ctx.saved_tensors))


def floor_impl(ours):
    """fwd / fwd+bwd callables of the floor beside our op's ``Impl`` (its output shape, leaves, output gradient)."""
    out, leaves, do = ours.fwd_nograd(), ours.leaves, ours.do

    def fwd():
        with torch.no_grad():
            return _Floor.apply(out, *leaves)

    def fwdbwd():
        _Floor.apply(out, *leaves).backward(do)
    return fwd, fwdbwd


def measure(spec, a):
    """One row: µs per call of ours (Triton path, launches skipped) and of the floor, launches per call."""
    from vla_mm.ops.common import kernel_options
    dtype = dict(bf16=torch.bfloat16, fp16=torch.float16, fp32=torch.float32)[a.dtype]
    cpu = torch.device('cpu')
    base = spec.make(1, 1, a.N, a.K, a.V, dtype, cpu)
    row = dict(op=spec.name)
    with kernel_options(backend='triton'), op_bench._counted_launches(stub=True) as box:
        impl = op_bench.make_impl(spec, 'ours', base)
        box[0] = 0
        impl.fwdbwd()
        row['launches'] = box[0]
        row['ours_fwd_us'] = common.host_us(impl.fwd_nograd, n=a.calls)
        row['ours_fwdbwd_us'] = common.host_us(impl.fwdbwd, n=a.calls)
        fwd, fwdbwd = floor_impl(impl)
        row['floor_fwd_us'] = common.host_us(fwd, n=a.calls)
        row['floor_fwdbwd_us'] = common.host_us(fwdbwd, n=a.calls)
        if a.profile:
            row['profile'] = common.host_profile(impl.fwdbwd, a.calls, cpu, a.profile_rows)
    row['over_floor_fwdbwd_us'] = row['ours_fwdbwd_us'] - row['floor_fwdbwd_us']
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True)
    p.add_argument('--ops', default=DEFAULT_OPS, help="comma-separated spec names of ops.py")
    p.add_argument('--N', type=int, default=64)
    p.add_argument('--K', type=int, default=64)
    p.add_argument('--V', type=int, default=64)
    p.add_argument('--dtype', default='bf16', choices=['bf16', 'fp16', 'fp32'])
    p.add_argument('--calls', type=int, default=300)
    p.add_argument('--profile', action='store_true', help='cProfile of each op\'s fwd+bwd calls')
    p.add_argument('--profile-rows', dest='profile_rows', type=int, default=25)
    p.add_argument('--deadline', type=float, default=600)
    a = p.parse_args(argv)
    from vla_mm.ops.common.options import interpreting
    if interpreting():
        sys.exit('error: TRITON_INTERPRET is set: the kernels would run in the interpreter, not be skipped')
    log, deadline, _ = common.start(a.out, a.deadline, cpu=True)
    specs = op_bench._specs()
    names = a.ops.split(',')
    unknown = [n for n in names if n not in specs]
    if unknown:
        sys.exit(f'error: unknown op spec(s) {unknown}; known: {sorted(specs)}')
    res = dict(env=common.describe_env(), args=vars(a), rows=[])
    for n in names:
        row = measure(specs[n], a)
        res['rows'].append(row)
        log(f"{n}: ours {row['ours_fwd_us']:.0f} / {row['ours_fwdbwd_us']:.0f} µs, floor "
            f"{row['floor_fwd_us']:.0f} / {row['floor_fwdbwd_us']:.0f}, launches {row['launches']}")
    common.write_json(osp.join(a.out, 'results.json'), res)
    cols = [('op', 'op'), ('launches (fwd+bwd)', 'launches'), ('ours fwd µs', 'ours_fwd_us'),
            ('ours fwd+bwd µs', 'ours_fwdbwd_us'), ('floor fwd µs', 'floor_fwd_us'),
            ('floor fwd+bwd µs', 'floor_fwdbwd_us'), ('fwd+bwd over the floor µs', 'over_floor_fwdbwd_us')]
    md = ['# Host time of the Triton path, launches skipped (CPU)', '',
          f"{res['env'].get('cpu', '')} torch {torch.__version__}; B1 H1 N{a.N} K{a.K} V{a.V} {a.dtype}, {a.calls} "
          'calls each, µs per call. Floor: an autograd.Function that allocates the same outputs and gradients.', '',
          common.md_table(res['rows'], cols), '']
    for r in res['rows']:
        if r.get('profile'):
            md += [f"## {r['op']}", '', '```', r['profile'], '```', '']
    common.write_text(osp.join(a.out, 'host_cpu.md'), '\n'.join(md))
    log(f'done: {len(names)} ops')
    return res


if __name__ == '__main__':
    main()
