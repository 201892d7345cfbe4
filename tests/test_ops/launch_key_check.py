"""Soundness of the launch cache's key against Triton's own binder (run by test_launch_cache.py in a process
without ``TRITON_INTERPRET``, so the kernels are JITFunctions): our ops' launches are caught on CPU tensors
(tools/analysis/kernel_resources.py), each replayed with every tensor moved off 16-byte alignment and every
integer set to 1, 17, 32, 2**33, 0 and -16 in turn, and Triton's specialisation (what its kernel cache key is made
of, from its binder for sm_90) computed beside our key: one key of ours must never meet two of Triton's.
``python tests/test_ops/launch_key_check.py`` prints the counts and exits 1 on a violation."""
import collections
import os.path as osp
import sys

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
OPS = ('layer_norm', 'add_layer_norm', 'linear_attn', 'delta_rule', 'gla_vector', 'hgrn')


def caught(KR, mod):
    from vla_mm.ops.common import kernel_options
    specs = {s.name: s for s in (mod._specs().values() if isinstance(mod._specs(), dict) else mod._specs())}
    out = []
    for name in OPS:
        for dtype, K in ((torch.bfloat16, 32), (torch.float32, 48)):
            base = specs[name].make(1, 2, 65, K, K, dtype, torch.device('cpu'))
            with kernel_options(backend='triton', launch_cache=False), KR.multiprocessors(132), \
                    KR.caught_launches(mod) as got:
                impl = mod.make_impl(specs[name], 'ours', base)
                got.clear()
                impl.fwdbwd()
            out += got
    return out


def variants(args):
    yield args
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor) and a.numel():
            off = torch.empty(a.numel() + 8, dtype=a.dtype)[1:1 + a.numel()].view(a.shape)
            yield args[:i] + (off,) + args[i + 1:]
        elif isinstance(a, int) and not isinstance(a, bool):
            for v in (1, 17, 32, 2 ** 33, 0, -16):
                yield args[:i] + (v,) + args[i + 1:]


def main():
    sys.path[:0] = [osp.join(ROOT, 'tools', 'analysis'), ROOT]
    import kernel_resources as KR
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    from vla_mm.ops.common import launch as L
    backend = make_backend(GPUTarget('cuda', 90, 32))
    binders, seen, calls = {}, collections.defaultdict(dict), 0
    for fn, args, kwargs, grid in caught(KR, KR.load_op_benchmark()):
        if fn not in binders:
            binders[fn] = create_function_from_signature(fn.signature, fn.params, backend)
        kernel = L.Kernel(fn)
        for va in variants(tuple(args)):
            _, specialization, options = binders[fn](*va, **dict(kwargs, debug=False))
            theirs = (repr(specialization), repr(sorted(options.items())))
            ours = kernel.key(*kernel.bind(va, kwargs), 0)
            if seen[fn].setdefault(ours, theirs) != theirs:
                print(f'VIOLATION {fn.__name__}: our key {ours} meets {seen[fn][ours]} and {theirs}')
                return 1
            calls += 1
    print(f'checked {calls} calls of {len(seen)} kernels: {sum(map(len, seen.values()))} keys of ours, each one '
          "specialisation of Triton's")
    return 0


if __name__ == '__main__':
    sys.exit(main())
