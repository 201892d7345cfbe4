"""Registers, spills and shared memory of our Triton kernels as a GPU would launch them, found without a GPU.

    python tools/analysis/kernel_resources.py --out work_dirs/kres --ops linear_attn,layer_norm \
        [--B 8 --H 12 --N 4096 --K 64 --V 64 --dtype bf16] [--sms 132] [--arch 90] [--launch JSON]

Each op spec of ``tools/benchmarks/ops.py`` runs forward and backward on CPU tensors at the given shape: our
host code (plans, launch choices, with ``--sms`` multiprocessors) runs as on the GPU, and every Triton launch
is caught instead of run, bound and specialised as Triton binds a CUDA launch (argument dtypes, integers and
pointers divisible by 16, integers equal to 1 as constants), then compiled for ``sm_<arch>`` offline.
``ptxas -v`` gives the registers and spill bytes of each kernel, its PTX the barriers (``bar.sync``) and
shared-memory instructions; a kernel whose shared memory passes the device limit is marked (its launch would
raise ``OutOfResources``). Writes resources.md and resources.json under ``--out``. Nothing is timed: where a
variant spills or converts layouts through shared memory, ``ops.py --launch`` on the device says what it costs.
"""
import argparse
import contextlib
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
import time

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SMEM_LIMIT = {90: 232448, 80: 166912}  # bytes of shared memory one block may take (opt-in maximum)
SMEM_PER_SM = {90: 233472, 80: 167936}  # bytes of shared memory per multiprocessor (1 KB of it reserved per block)
REGS_PER_SM, MAX_WARPS_PER_SM, MAX_BLOCKS_PER_SM = 65536, 64, 32
COLUMNS = [('op', 'op'), ('kernel', 'kernel'), ('launches', 'launches'), ('grid', 'grid'), ('warps', 'num_warps'),
           ('stages', 'num_stages'), ('registers', 'registers'), ('spill stores B', 'spill_stores'),
           ('spill loads B', 'spill_loads'), ('shared KiB', 'shared_kib'), ('blocks / SM', 'blocks_per_sm'),
           ('bar.sync', 'barriers'),
           ('ld/st.shared', 'shared_ops'), ('note', 'note')]


def load_op_benchmark():
    """``tools/benchmarks/ops.py`` as a module (its op specs: inputs, our call, gradients)."""
    path = osp.join(ROOT, 'tools', 'benchmarks', 'ops.py')
    spec = importlib.util.spec_from_file_location('ops_benchmark', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def caught_launches(mod):
    """Every Triton launch recorded as (kernel, args, kwargs, grid) and not run (``mod``: ops.py)."""
    launches = []

    def catch(real, kernel, *args, grid, warmup, **kwargs):
        launches.append((kernel, args, dict(kwargs), grid))

    with mod.launches_replaced(catch):
        yield launches


@contextlib.contextmanager
def multiprocessors(n):
    """Our host code's ``num_sms`` answers ``n`` (the plans of a GPU with n SMs) in every ops module."""
    from vla_mm.ops.common import options
    real = options.num_sms
    mods = [m for name, m in list(sys.modules.items()) if name.startswith('vla_mm.ops') and m is not None
            and getattr(m, 'num_sms', None) is real]
    for m in mods:
        m.num_sms = lambda device: n
    try:
        yield
    finally:
        for m in mods:
            m.num_sms = real


def compile_launch(fn, args, kwargs, arch):
    """Bind and specialise one caught launch as Triton does for a CUDA launch; compile it for sm_<arch>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
    target = GPUTarget('cuda', arch, 32)
    backend = make_backend(target)
    kwargs = dict(kwargs, debug=kwargs.get('debug', False))
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, opts)
    key = (fn.cache_key, tuple(sorted(signature.items())), tuple(sorted(constexprs.items())), repr(attrs),
           repr(options))
    return key, lambda: triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                       options=options.__dict__)


def blocks_per_sm(registers, num_warps, shared, arch):
    """Programs one multiprocessor holds at once, by registers (allocated 256 per warp), shared memory and warps."""
    if not registers:
        return None
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = REGS_PER_SM // (per_warp * num_warps)
    by_smem = SMEM_PER_SM.get(arch, SMEM_PER_SM[90]) // (shared + 1024) if shared else MAX_BLOCKS_PER_SM
    return min(by_regs, by_smem, MAX_WARPS_PER_SM // num_warps, MAX_BLOCKS_PER_SM)


def ptxas_report(ptx, arch):
    """(registers, spill store bytes, spill load bytes) from ``ptxas -v`` of the kernel's PTX."""
    from triton.backends.nvidia.compiler import get_ptxas
    tool = get_ptxas(arch)
    path = getattr(tool, 'path', tool)
    with tempfile.TemporaryDirectory() as tmp:
        src = osp.join(tmp, 'k.ptx')
        with open(src, 'w') as f:
            f.write(ptx)
        gpu = f'sm_{arch}a' if arch >= 90 else f'sm_{arch}'
        err = subprocess.run([path, '-v', f'--gpu-name={gpu}', src, '-o', osp.join(tmp, 'k.o')],
                             capture_output=True, text=True).stderr

    def first(pattern):
        m = re.search(pattern, err)
        return int(m.group(1)) if m else None
    return first(r'Used (\d+) registers'), first(r'(\d+) bytes spill stores'), first(r'(\d+) bytes spill loads')


def resources(build, arch):
    """The report's columns of one kernel, compiled by ``build()`` (a compile error is a row, not the end)."""
    t0 = time.time()
    try:
        ck = build()
        ptx, shared, warps = ck.asm['ptx'], ck.metadata.shared, ck.metadata.num_warps
        regs, st, ld = ptxas_report(ptx, arch)
    except Exception as e:  # noqa: BLE001
        return dict(note=f"compile error: {type(e).__name__}: {str(e)[:120]}", error=f"{type(e).__name__}: {e}")
    return dict(num_warps=warps, num_stages=ck.metadata.num_stages, registers=regs, spill_stores=st,
                spill_loads=ld, shared_kib=round(shared / 1024, 1),
                blocks_per_sm=blocks_per_sm(regs, warps, shared, arch),
                barriers=ptx.count('bar.sync'), shared_ops=ptx.count('ld.shared') + ptx.count('st.shared'),
                note='shared memory over the limit' if shared > SMEM_LIMIT.get(arch, 1 << 30) else
                     ('spills' if (st or 0) > 0 else ''),
                compile_s=round(time.time() - t0, 1), ptx=ptx)


def op_launches(spec, mod, a, dtype):
    """The launches of our forward + backward of ``spec`` at the requested shape (CPU tensors, nothing run)."""
    from vla_mm.ops.common import kernel_options
    with torch.random.fork_rng():
        torch.manual_seed(0)
        base = spec.make(a.B, a.H, a.N, a.K, a.V, dtype, torch.device('cpu'))
    opts = dict(backend='triton', launch=a.launch or {}, launch_cache=False)  # every launch through Triton's run
    with kernel_options(**opts), multiprocessors(a.sms), caught_launches(mod) as got:
        impl = mod.make_impl(spec, 'ours', base)  # runs one forward (no grad) for the output gradient's shape
        got.clear()
        impl.fwdbwd()
    return got


def analyse(a):
    mod = load_op_benchmark()
    specs = {n: s for n, s in mod._specs().items() if s.ours is not None}
    names = list(specs) if a.ops == 'all' else a.ops.split(',')
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise SystemExit(f'--ops: unknown {unknown}; known: {sorted(specs)}')
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}[a.dtype]
    rows, compiled = [], {}
    for name in names:
        per_kernel = {}
        for fn, args, kwargs, grid in op_launches(specs[name], mod, a, dtype):
            key, build = compile_launch(fn, args, kwargs, a.arch)
            if key not in per_kernel:
                per_kernel[key] = dict(op=name, kernel=fn.__name__, launches=0, grid=str(tuple(grid)))
                if key not in compiled:
                    compiled[key] = resources(build, a.arch)
                    ptx = compiled[key].pop('ptx', None)
                    if a.ptx and ptx:  # PTX to read (barriers, layouts) beside the report
                        os.makedirs(a.out, exist_ok=True)
                        with open(osp.join(a.out, f'{name}{fn.__name__}_{len(compiled)}.ptx'), 'w') as f:
                            f.write(ptx)
                per_kernel[key].update(compiled[key])
            per_kernel[key]['launches'] += 1
        rows += list(per_kernel.values())
        print(f'{name}: {len(per_kernel)} kernels', flush=True)
    return rows


def report(rows, a):
    os.makedirs(a.out, exist_ok=True)
    with open(osp.join(a.out, 'resources.json'), 'w') as f:
        json.dump(dict(args=vars(a), rows=rows), f, indent=1)
    head = '| ' + ' | '.join(c for c, _ in COLUMNS) + ' |'
    lines = [f'# Kernel resources, offline sm_{a.arch} (B{a.B} H{a.H} N{a.N} K{a.K} V{a.V} {a.dtype}, '
             f'{a.sms} SMs, launch {a.launch or {}})', '',
             'Forward + backward of each op; registers and spills from ptxas, programs per multiprocessor from '
             'registers, shared memory and warps, barriers and shared-memory instructions counted in the PTX '
             '(static counts, not executions).', '',
             head, '|' + ' --- |' * len(COLUMNS)]
    for r in rows:
        lines.append('| ' + ' | '.join('-' if r.get(k) is None else str(r.get(k)) for _, k in COLUMNS) + ' |')
    text = '\n'.join(lines) + '\n'
    with open(osp.join(a.out, 'resources.md'), 'w') as f:
        f.write(text)
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--out', required=True)
    p.add_argument('--ops', default='linear_attn', help="comma-separated spec names of ops.py, or 'all'")
    p.add_argument('--B', type=int, default=8)
    p.add_argument('--H', type=int, default=12)
    p.add_argument('--N', type=int, default=4096)
    p.add_argument('--K', type=int, default=64)
    p.add_argument('--V', type=int, default=64)
    p.add_argument('--dtype', default='bf16', choices=['bf16', 'fp16', 'fp32'])
    p.add_argument('--sms', type=int, default=132, help='multiprocessors of the GPU the plans are made for')
    p.add_argument('--arch', type=int, default=90, help='compute capability, e.g. 90 (Hopper)')
    p.add_argument('--launch', type=json.loads, default=None,
                   help='launch options of our kernels, as JSON: kernel_options(launch=...) (names in docs/ops.md)')
    p.add_argument('--ptx', action='store_true', help='also write each compiled kernel\'s PTX under --out')
    return p.parse_args(argv)


def main(argv=None):
    os.environ.pop('TRITON_INTERPRET', None)  # before any kernel is defined: JIT kernels compiled as for a GPU
    a = parse_args(argv)
    sys.path.insert(0, ROOT)
    print(report(analyse(a), a))
    return 0


if __name__ == '__main__':
    sys.exit(main())
