"""GPU sweep of every public op of ``vla_mm.ops``: forward and every gradient against a float64 reference.

    python tools/check_ops_gpu.py --out $OUT                      # the sweep (stops starting cases at --deadline)
    python tools/check_ops_gpu.py --out $OUT --memcheck --compile # plus compute-sanitizer and torch.compile parts
    python tools/check_ops_gpu.py --out $OUT --shard 1/2          # half of it (balanced by estimated compile time)
    python tools/check_ops_gpu.py --smoke --out DIR               # CPU: tiny cases, reference + interpreter paths

Ops: ``linear_attn``, ``chunk_gla`` (gate none / scalar / vector, bonus ``u``, value gates ``gv``), its wrappers
(``chunk_linear_attn``, ``chunk_simple_gla``, ``chunk_retention``, ``chunk_rwkv6``), ``gsa``, ``hgrn``,
``delta_rule`` without and with ``g`` (``gated_delta_rule``). Axes: dtype {fp32, bf16, fp16}, K {16 ... 256},
ragged V, N {1, 63, 64, 65, 1000, 4097} and each op's options (reverse, initial state, final state, packed
sequences with one-token sequences, random / strong (-20) / weak (~-1e-3) log gates). The product is too large:
a deterministic covering design of valid option combinations runs every K with every dtype at N = 65 and
N = 1000 for each op, and every value of every other axis with every dtype (rotating the rest). A short list of
arguments an op cannot take (``INVALID``) must each raise a ValueError naming the argument before any Triton
launch.

Each case: inputs drawn in float64 and rounded to the dtype; the op on CUDA tensors of that dtype; the family's
reference on float64 copies of the same rounded inputs (on the GPU: plain torch); one backward with the same
random cotangents (rounded to the outputs' dtypes; a gradient autograd reports as None, an input that reaches no
output, is zero). Every output and input gradient is judged by ``||x - R|| / ||ref||``, R the float64 reference,
or where x's dtype cannot represent it (below its smallest normal) the dtype value next to it on x's side
(``judged_err``); by ``||x - R|| / scale`` where ``||ref||`` is zero or below ``ABS_FLOOR`` of the case scale
(``case_scales``: the largest RMS of the case's other references times sqrt(x's element count)); the raw
``||x - ref|| / ||ref||`` and ``max |x - ref|`` are recorded beside it. Pass below 1e-4 (fp32) / 1e-2 (bf16,
fp16; 2e-2 for the bf16 delta rule, whose intermediates are bf16: ``OP_TOL``); NaN / Inf fail; an exception
fails its case only. All cases run in worker subprocesses (one group per op, dtype and K, several groups at
once): an illegal memory access kills only its worker, whose finished cases are kept and whose other cases re-run
in a fresh worker. Outputs under ``--out``:
``results.json`` (every case) and ``table.md`` (op x dtype: cases run / passed / worst error / failures),
the table printed last. Imports only torch, triton and ``vla_mm.ops`` (the ``ops/`` folder of this checkout,
else the installed ``vla_mm/ops``; the ``vla_mm`` package itself and MMEngine are not imported).
"""
import argparse
import faulthandler
import importlib
import importlib.util
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import types
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = ('float32', 'bfloat16', 'float16')
KS = (16, 32, 48, 64, 96, 128, 192, 256)
VS = (16, 48, 80, 100, 128, 200)
NS = (1, 63, 64, 65, 1000, 4097)
TOL = {'float32': 1e-4, 'bfloat16': 1e-2, 'float16': 1e-2}
# bf16 delta rule: W, U~, U and the chunk states kept in bf16 (delta_rule_residuals='input', the default, as fla
# keeps them) about double the error of fp32 ones (tests/test_ops/test_delta_rule.py: tails to 1.02e-2 at K = 96)
OP_TOL = {('delta_rule', 'bfloat16'): 2e-2, ('gated_delta_rule', 'bfloat16'): 2e-2}
# errors after which the CUDA context is lost: the worker records the case and exits
STICKY_ERRORS = ('illegal memory access', 'CUDA error', 'Triton Error [CUDA]', 'misaligned address',
                 'unspecified launch failure', 'illegal instruction')
FAMILIES = ('linear_attn', 'gla', 'gsa', 'hgrn', 'delta_rule', 'norm', 'conv', 'reduce')
NO_V = ('hgrn', 'layer_norm', 'short_conv', 'sum_rows')  # ops without a value dim (V = 0 in their cases)
RISKY_K = 96          # 16-bit cases at K >= this run in their own worker per op (issue 15's crash)
B, H = 1, 2


def tolerance(op, dtype):
    """The relative-error bound of ``op`` (a record's name, ' [triton]' or not) in ``dtype``."""
    return OP_TOL.get((op.split(' ')[0], dtype), TOL[dtype])


def bind_ops(source=None):
    """Import ``vla_mm.ops`` without running ``vla_mm/__init__.py`` (which imports MMEngine): a bare ``vla_mm``
    package whose ``ops`` is this checkout's ``ops/`` folder, else the installed ``vla_mm/ops``."""
    if 'vla_mm.ops' in sys.modules:
        return sys.modules['vla_mm.ops']
    src = source or os.path.join(REPO, 'ops')
    if not os.path.isfile(os.path.join(src, '__init__.py')):
        spec = importlib.util.find_spec('vla_mm')
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f'no ops/ folder at {src} and no installed vla_mm')
        src = os.path.join(list(spec.submodule_search_locations)[0], 'ops')
    pkg = sys.modules.get('vla_mm')
    if pkg is None:
        pkg = types.ModuleType('vla_mm')
        pkg.__path__ = []
        sys.modules['vla_mm'] = pkg
    spec = importlib.util.spec_from_file_location('vla_mm.ops', os.path.join(src, '__init__.py'),
                                                  submodule_search_locations=[src])
    mod = importlib.util.module_from_spec(spec)
    sys.modules['vla_mm.ops'] = mod
    spec.loader.exec_module(mod)
    pkg.ops = mod
    for fam in FAMILIES:   # a family that fails to import fails its cases, not the others
        try:
            importlib.import_module('vla_mm.ops.' + fam)
        except Exception as e:   # noqa: BLE001
            print(f'vla_mm.ops.{fam} does not import: {type(e).__name__}: {e}', file=sys.stderr)
    return mod


# ----------------------------------------------------------------------------------------------- the ops

GATES = ('random', 'strong', 'weak')


def _log_gate(torch, shape, kind, gen, dev):
    if kind == 'strong':
        return torch.full(shape, -20.0, dtype=torch.float64, device=dev)
    if kind == 'weak':
        return -torch.rand(shape, generator=gen, dtype=torch.float64, device=dev) * 1e-3
    return -torch.nn.functional.softplus(torch.randn(shape, generator=gen, dtype=torch.float64, device=dev) * 2)


def _cu(torch, N, dev):
    """Packed boundaries of N tokens with one-token sequences among them: [1, a, 1, rest] (as N allows)."""
    if N <= 2:
        lens = [1] * N
    else:
        a = (N - 2) // 2
        lens = [1, a, 1, N - 2 - a] if N - 2 - a > 0 else [1, a, 1]
    lens = [x for x in lens if x > 0]
    return torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device=dev)


class Op:
    """One public op: ``axes`` (its options), ``make`` (float64 inputs), ``run`` (the op), ``ref`` (float64)."""

    name = ''
    axes = {}
    rules = ()     # (predicate(case), why): option combinations the design must not generate
    repair = ()    # the axes the design changes first to turn an invalid rotation into a valid one

    def __init__(self, ops):
        self.ops = ops

    def cancelled(self, c):
        """Gradients of case ``c`` that are 0 in exact arithmetic but for an eps, through a cancellation: their
        float64 reference is ~eps-sized, the kernel's is its rounding noise; judged by absolute error."""
        return ()


class LinearAttn(Op):
    name = 'linear_attn'
    axes = {'feature_map': ('elu1', 'relu', 'focused', 'identity'), 'normalize': (True, False),
            'norm': ('standard', 'linfusion'), 'packed': (False, True)}

    def make(self, torch, c, gen, dev):
        K, V, N = c['K'], c['V'], c['N']
        t = {n: torch.randn(B, N, H, d, generator=gen, dtype=torch.float64, device=dev)
             for n, d in (('q', K), ('k', K), ('v', V))}
        return t, {}

    # option combinations the design does not generate (the first raises ValueError: see INVALID)
    rules = ((lambda c: c['norm'] != 'standard' and not c['normalize'],
              "norm='linfusion' only applies to normalize=True"),
             (lambda c: c['feature_map'] == 'identity' and c['normalize'],
              'identity features with normalize: the denominator sums raw q.k, can be ~0 (ill-posed)'))
    repair = ('norm', 'normalize')

    def cancelled(self, c):
        # normalized, a one-token sequence gives o = v * d / (d + eps) with d = phi(q).phi(k): dq, dk are O(eps)
        return ('dq', 'dk') if c['normalize'] and c['N'] == 1 else ()

    def kwargs(self, c, extra):
        return dict(feature_map=c['feature_map'], normalize=c['normalize'], norm=c['norm'],
                    cu_seqlens=extra.get('cu_seqlens'))

    def run(self, t, c, extra, impl):
        fn = self.ops.linear_attn.linear_attn_triton if impl == 'triton' else self.ops.linear_attn.linear_attn
        return {'o': fn(t['q'], t['k'], t['v'], **self.kwargs(c, extra))}

    def ref(self, t, c, extra):
        return {'o': self.ops.linear_attn.linear_attn_reference(t['q'], t['k'], t['v'], **self.kwargs(c, extra))}


class _Recurrent(Op):
    """Shared axes of the causal ops."""
    axes = {'reverse': (False, True), 'h0': (False, True), 'final': (True, False), 'packed': (False, True),
            'gates': GATES}


def _state_split(ops, c):
    """Launch options of a case's ``segment`` axis: 1 = the state kernels' time split at one chunk a segment
    (every state crosses a segment boundary); 0 = the plan's own choice."""
    return ops.common.kernel_options(launch={'gla_state': {'segment': 1}} if c.get('segment') else {})


class ChunkGLA(_Recurrent):
    name = 'chunk_gla'
    axes = dict(_Recurrent.axes, gate=('none', 'scalar', 'vector'), extra=('plain', 'u', 'gv'), segment=(0, 1))

    def make(self, torch, c, gen, dev):
        K, V, N = c['K'], c['V'], c['N']
        t = {n: torch.randn(B, N, H, d, generator=gen, dtype=torch.float64, device=dev)
             for n, d in (('q', K), ('k', K), ('v', V))}
        if c['gate'] == 'scalar':
            t['g'] = _log_gate(torch, (B, N, H), c['gates'], gen, dev)
        elif c['gate'] == 'vector':
            t['g'] = _log_gate(torch, (B, N, H, K), c['gates'], gen, dev)
        if c['extra'] == 'u':
            t['u'] = torch.randn(H, K, generator=gen, dtype=torch.float64, device=dev) * 0.5
        elif c['extra'] == 'gv':
            t['gv'] = _log_gate(torch, (B, N, H, V), c['gates'], gen, dev)
        return t, {}

    def _args(self, t, c, extra):
        return dict(gv=t.get('gv'), u=t.get('u'), initial_state=t.get('h0'), output_final_state=c['final'],
                    cu_seqlens=extra.get('cu_seqlens'), reverse=c['reverse'])

    def run(self, t, c, extra, impl):
        with _state_split(self.ops, c):
            if impl == 'triton':
                o, ht = self.ops.gla.chunk_gla_triton(t['q'], t['k'], t['v'], gk=t.get('g'),
                                                      **self._args(t, c, extra))
            else:
                o, ht = self.ops.gla.chunk_gla(t['q'], t['k'], t['v'], t.get('g'), gate=c['gate'],
                                               **self._args(t, c, extra))
        return {'o': o, 'final_state': ht}

    def ref(self, t, c, extra):
        o, ht = self.ops.gla.gla_chunk_reference(t['q'], t['k'], t['v'], gk=t.get('g'), **self._args(t, c, extra))
        return {'o': o, 'final_state': ht}


class GLAWrapper(ChunkGLA):
    """``chunk_linear_attn`` / ``chunk_simple_gla`` / ``chunk_retention`` / ``chunk_rwkv6``: the wrapper against
    ``gla_chunk_reference`` with the gate the wrapper implies."""
    axes = dict(_Recurrent.axes)
    gate = extra_kind = None

    def __init__(self, ops, name, gate, extra='plain'):
        super().__init__(ops)
        self.name, self.gate, self.extra_kind = name, gate, extra
        self.axes = OP_AXES[name]

    def make(self, torch, c, gen, dev):
        c = dict(c, gate=self.gate, extra=self.extra_kind)
        t, e = super().make(torch, c, gen, dev)
        if self.name == 'chunk_retention':
            t.pop('g', None)
        return t, e

    def _wargs(self, t, c, extra):
        return dict(initial_state=t.get('h0'), output_final_state=c['final'], cu_seqlens=extra.get('cu_seqlens'),
                    reverse=c['reverse'])

    def run(self, t, c, extra, impl):
        # fuse_a: the intra-chunk scores formed inside _fwd_oA_kernel, the strict-pair dq / dk inside _bwd_dA_kernel;
        # 'da': those and dA inside _bwd_inter_kernel (inter fuse_da)
        fa = c.get('fuse_a')
        launch = {'fwd_oA': {'fuse_a': bool(fa)}, 'dA': {'fuse_intra': bool(fa)},
                  'inter': {'fuse_da': fa == 'da'}} if 'fuse_a' in c else {}
        if 'load_m' in c:
            # load_m: the vector-gate diagonal sub-block of _bwd_intra_kernel reads dA from memory (the default)
            launch['intra'] = {'load_m': c['load_m']}
        # bwd_fp32: gla_bwd_fp32 ('gate_grads': 16-bit backward operands where no gate gradient is taken)
        opts = {'gla_bwd_fp32': c['bwd_fp32']} if 'bwd_fp32' in c else {}
        with self.ops.common.kernel_options(launch=launch, **opts):
            return self._run(t, c, extra)

    def _run(self, t, c, extra):
        gla = self.ops.gla
        if self.name == 'chunk_linear_attn':
            o, ht = gla.chunk_linear_attn(t['q'], t['k'], t['v'], **self._wargs(t, c, extra))
        elif self.name == 'chunk_simple_gla':
            o, ht = gla.chunk_simple_gla(t['q'], t['k'], t['v'], t['g'], **self._wargs(t, c, extra))
        elif self.name == 'chunk_retention':
            o, ht = gla.chunk_retention(t['q'], t['k'], t['v'], **self._wargs(t, c, extra))
        else:
            o, ht = gla.chunk_rwkv6(t['q'], t['k'], t['v'], t['g'], t['u'], **self._wargs(t, c, extra))
        return {'o': o, 'final_state': ht}

    def ref(self, t, c, extra):
        g, scale = t.get('g'), None
        if self.name == 'chunk_retention':
            g = self.ops.gla.retention_log_decay(H, device=t['q'].device, dtype=t['q'].dtype).expand(
                *t['q'].shape[:3])
        if self.name == 'chunk_rwkv6':
            scale = 1.0
        o, ht = self.ops.gla.gla_chunk_reference(t['q'], t['k'], t['v'], gk=g, u=t.get('u'), scale=scale,
                                                 **self._wargs(t, c, extra))
        return {'o': o, 'final_state': ht}


class GSA(_Recurrent):
    name = 'gsa'
    axes = dict(_Recurrent.axes, M=(16, 40), segment=(0, 1))

    def make(self, torch, c, gen, dev):
        K, V, N, M = c['K'], c['V'], c['N'], c['M']
        t = {n: torch.randn(B, N, H, d, generator=gen, dtype=torch.float64, device=dev)
             for n, d in (('q', K), ('k', K), ('v', V))}
        t['s'] = torch.randn(B, N, H, M, generator=gen, dtype=torch.float64, device=dev).softmax(-1)
        t['g'] = _log_gate(torch, (B, N, H, M), c['gates'], gen, dev)
        return t, {}

    def _args(self, t, c, extra):
        h0 = (t['h0k'], t['h0v']) if 'h0k' in t else None
        return dict(initial_state=h0, output_final_state=c['final'], cu_seqlens=extra.get('cu_seqlens'),
                    reverse=c['reverse'])

    @staticmethod
    def _out(o, ht):
        out = {'o': o}
        if ht is not None:
            out['final_k'], out['final_v'] = ht
        return out

    def run(self, t, c, extra, impl):
        fn = self.ops.gsa.gsa_triton if impl == 'triton' else self.ops.gsa.gsa
        with _state_split(self.ops, c):
            return self._out(*fn(t['q'], t['k'], t['v'], t['s'], t['g'], **self._args(t, c, extra)))

    def ref(self, t, c, extra):
        return self._out(*self.ops.gsa.gsa_recurrent_reference(t['q'], t['k'], t['v'], t['s'], t['g'],
                                                               **self._args(t, c, extra)))


class HGRN(_Recurrent):
    name = 'hgrn'
    # segment 0: the plan's own split; 64: every chunk its own segment (the time-split scan at its finest)
    axes = dict(_Recurrent.axes, gated_input=(True, False), segment=(0, 64))

    def make(self, torch, c, gen, dev):
        D = H * c['K']
        return {'x': torch.randn(B, c['N'], D, generator=gen, dtype=torch.float64, device=dev),
                'g': _log_gate(torch, (B, c['N'], D), c['gates'], gen, dev)}, {}

    def _args(self, t, c, extra):
        return dict(initial_state=t.get('h0'), output_final_state=c['final'], cu_seqlens=extra.get('cu_seqlens'),
                    reverse=c['reverse'], gated_input=c['gated_input'])

    def run(self, t, c, extra, impl):
        fn = self.ops.hgrn.hgrn_triton if impl == 'triton' else self.ops.hgrn.hgrn
        launch = {'hgrn': {'segment': c['segment']}} if c.get('segment') else {}
        with self.ops.common.kernel_options(launch=launch):
            o, ht = fn(t['x'], t['g'], **self._args(t, c, extra))
        return {'o': o, 'final_state': ht}

    def ref(self, t, c, extra):
        o, ht = self.ops.hgrn.hgrn_recurrent_reference(t['x'], t['g'], **self._args(t, c, extra))
        return {'o': o, 'final_state': ht}


class DeltaRule(_Recurrent):
    name = 'delta_rule'
    gated = False

    def __init__(self, ops, gated):
        super().__init__(ops)
        self.gated = gated
        self.name = 'gated_delta_rule' if gated else 'delta_rule'
        self.axes = OP_AXES[self.name]

    def make(self, torch, c, gen, dev):
        K, V, N = c['K'], c['V'], c['N']
        t = {n: torch.randn(B, N, H, d, generator=gen, dtype=torch.float64, device=dev)
             for n, d in (('q', K), ('k', K), ('v', V))}
        t['k'] = torch.nn.functional.normalize(t['k'], dim=-1)
        t['beta'] = torch.rand(B, N, H, generator=gen, dtype=torch.float64, device=dev) * 0.9 + 0.05
        if self.gated:
            t['g'] = _log_gate(torch, (B, N, H), c['gates'], gen, dev)
        return t, {}

    def _args(self, t, c, extra):
        return dict(initial_state=t.get('h0'), output_final_state=c['final'], cu_seqlens=extra.get('cu_seqlens'),
                    reverse=c['reverse'])

    def run(self, t, c, extra, impl):
        dr = self.ops.delta_rule
        fn = dr.delta_rule_triton if impl == 'triton' else dr.delta_rule
        launch = {'delta_rule_dstate': {'local': c['local']}} if 'local' in c else {}
        with self.ops.common.kernel_options(launch=launch):
            o, ht = fn(t['q'], t['k'], t['v'], t['beta'], t.get('g'), **self._args(t, c, extra))
        return {'o': o, 'final_state': ht}

    def ref(self, t, c, extra):
        o, ht = self.ops.delta_rule.delta_rule_chunked(t['q'], t['k'], t['v'], t['beta'], t.get('g'),
                                                       **self._args(t, c, extra))
        return {'o': o, 'final_state': ht}


class LayerNorm(Op):
    """The fused norm over C = H * K channels of [B, N, C] rows (V unused): LayerNorm or RMSNorm, with weight and
    bias, weight only or neither, optionally times swish(gate), y in x's dtype or fp32 (the autocast case the
    other way round: fp32 x, 16-bit y, is what the run dtype's rounding of y covers). ``residual``: the
    pre-norm residual op ``add_layer_norm(x, r)`` (y and the sum s; ungated)."""
    name = 'layer_norm'
    axes = {'rms': (False, True), 'affine': ('both', 'weight', 'none'), 'gated': (False, True),
            'out': ('same', 'float32'), 'residual': (False, True)}
    rules = ((lambda c: c['residual'] and c['gated'], 'add_layer_norm has no gate'),)
    repair = ('gated',)

    def make(self, torch, c, gen, dev):
        C, N = H * c['K'], c['N']
        t = {'x': torch.randn(B, N, C, generator=gen, dtype=torch.float64, device=dev) * 2 + 0.5}
        if c['affine'] != 'none':
            t['w'] = torch.randn(C, generator=gen, dtype=torch.float64, device=dev)
        if c['affine'] == 'both':
            t['b'] = torch.randn(C, generator=gen, dtype=torch.float64, device=dev)
        if c['gated']:
            t['gate'] = torch.randn(B, N, C, generator=gen, dtype=torch.float64, device=dev) * 2
        if c.get('residual'):
            t['r'] = torch.randn(B, N, C, generator=gen, dtype=torch.float64, device=dev) * 2
        return t, {}

    def run(self, t, c, extra, impl):
        norm = self.ops.norm
        import torch
        out = torch.float32 if c['out'] == 'float32' else None
        if c.get('residual'):
            with self.ops.common.kernel_options(backend='triton' if impl == 'triton' else 'auto'):
                y, s = norm.add_layer_norm(t['x'], t['r'], t.get('w'), t.get('b'), 1e-5, rms=c['rms'],
                                           out_dtype=out)
            return {'o': y, 's': s}
        fn = norm.layer_norm_triton if impl == 'triton' else norm.layer_norm
        return {'o': fn(t['x'], t.get('w'), t.get('b'), 1e-5, rms=c['rms'], out_dtype=out, gate=t.get('gate'))}

    def ref(self, t, c, extra):
        import torch
        x = t['x'] + t['r'] if c.get('residual') else t['x']
        o = self.ops.norm.norm_reference(x, t.get('w'), t.get('b'), 1e-5, c['rms'], torch.float64, t.get('gate'))
        return {'o': o, 's': x} if c.get('residual') else {'o': o}


class ShortConv(Op):
    """The short convolution over C = H * K channels of [B, N, C] tokens (V unused): ``width`` taps, with or
    without bias and SiLU, forward or reverse, dense or packed (one-token sequences: shorter than the taps)."""
    name = 'short_conv'
    axes = {'width': (4, 3, 2), 'bias': (True, False), 'silu': (True, False), 'reverse': (False, True),
            'packed': (False, True)}

    def make(self, torch, c, gen, dev):
        C, N = H * c['K'], c['N']
        t = {'x': torch.randn(B, N, C, generator=gen, dtype=torch.float64, device=dev),
             'w': torch.randn(C, c['width'], generator=gen, dtype=torch.float64, device=dev) / 2}
        if c['bias']:
            t['b'] = torch.randn(C, generator=gen, dtype=torch.float64, device=dev)
        return t, {}

    def _args(self, c, extra):
        return dict(activation='silu' if c['silu'] else None, reverse=c['reverse'],
                    cu_seqlens=extra.get('cu_seqlens'))

    def run(self, t, c, extra, impl):
        conv = self.ops.conv
        if impl == 'triton':
            return {'o': conv.short_conv_triton(t['x'], t['w'], t.get('b'), **self._args(c, extra))}
        return {'o': conv.short_conv(t['x'], t['w'], t.get('b'), **self._args(c, extra))}

    def ref(self, t, c, extra):
        a = self._args(c, extra)
        return {'o': self.ops.conv.short_conv_reference(t['x'], t['w'], t.get('b'), a['activation'], a['reverse'],
                                                         a['cu_seqlens'])}


class SumRows(Op):
    """The sum over rows of ``[B, N, C = H * K]`` (V unused), contiguous or with strided rows (a column slice)."""
    name = 'sum_rows'
    axes = {'strided': (False, True)}

    def make(self, torch, c, gen, dev):
        C = H * c['K']
        x = torch.randn(B, c['N'], C + (8 if c['strided'] else 0), generator=gen, dtype=torch.float64, device=dev)
        return {'x': x}, {}

    def _x(self, t, c):
        return t['x'][..., :H * c['K']]

    def run(self, t, c, extra, impl):
        fn = self.ops.reduce.sum_rows_triton if impl == 'triton' else self.ops.reduce.sum_rows
        return {'o': fn(self._x(t, c))}

    def ref(self, t, c, extra):
        return {'o': self.ops.reduce.sum_rows_reference(self._x(t, c))}


def make_ops(ops):
    return [LinearAttn(ops), ChunkGLA(ops), GLAWrapper(ops, 'chunk_linear_attn', 'none'),
            GLAWrapper(ops, 'chunk_simple_gla', 'scalar'), GLAWrapper(ops, 'chunk_retention', 'none'),
            GLAWrapper(ops, 'chunk_rwkv6', 'vector', 'u'), GSA(ops), HGRN(ops), DeltaRule(ops, False),
            DeltaRule(ops, True), LayerNorm(ops), ShortConv(ops), SumRows(ops)]


# fuse_a: the one-gate-per-head (or gateless) wrappers with their intra-chunk scores formed in _fwd_oA_kernel
OP_AXES = {'linear_attn': LinearAttn.axes, 'chunk_gla': ChunkGLA.axes,
           'chunk_linear_attn': dict(_Recurrent.axes, fuse_a=(False, True, 'da'), bwd_fp32=(True, 'gate_grads')),
           'chunk_simple_gla': dict(_Recurrent.axes, fuse_a=(False, True, 'da')),
           'chunk_retention': dict(_Recurrent.axes, fuse_a=(False, True, 'da'), bwd_fp32=(True, 'gate_grads')),
           'chunk_rwkv6': dict(_Recurrent.axes, load_m=(False, True)),
           'gsa': GSA.axes, 'hgrn': HGRN.axes,
           # local: _dstate's chunk-local terms from the parallel _dlocal kernel (launch 'delta_rule_dstate')
           'delta_rule': dict({k: v for k, v in _Recurrent.axes.items() if k != 'gates'}, local=(False, True)),
           'gated_delta_rule': dict(_Recurrent.axes, local=(False, True)), 'layer_norm': LayerNorm.axes,
           'short_conv': ShortConv.axes, 'sum_rows': SumRows.axes}
WRAPPERS = ('chunk_linear_attn', 'chunk_simple_gla', 'chunk_retention', 'chunk_rwkv6')
# the delta rule's local path runs at K <= this (ops/delta_rule DSTATE_LOCAL_MAX_K: the op refuses it above)
LOCAL_MAX_K = 128
_LOCAL_RULE = ((lambda c: c['local'] and c['K'] > LOCAL_MAX_K, f'local runs at K <= {LOCAL_MAX_K}'),), ('local',)
OP_RULES = {'linear_attn': (LinearAttn.rules, LinearAttn.repair), 'layer_norm': (LayerNorm.rules, LayerNorm.repair),
            'delta_rule': _LOCAL_RULE, 'gated_delta_rule': _LOCAL_RULE}


def invalid_reason(c):
    """Why the options of case ``c`` are not a valid combination (None when they are)."""
    return next((why for pred, why in OP_RULES.get(c['op'], ((), ()))[0] if pred(c)), None)


def _repair(c, axes, keep=()):
    """The nearest valid setting: ``c`` itself, else one or two axes changed (the op's ``repair`` axes first,
    never those in ``keep``), trying values in axis order."""
    if invalid_reason(c) is None:
        return c
    first = [a for a in OP_RULES.get(c['op'], ((), ()))[1] if a not in keep]
    for names in (first, [a for a in sorted(axes) if a not in keep]):
        for r in (1, 2):
            for combo in itertools.combinations(names, r):
                for vals in itertools.product(*(axes[a] for a in combo)):
                    d = dict(c, **dict(zip(combo, vals)))
                    if invalid_reason(d) is None:
                        return d
    raise ValueError(f'no valid setting near {c}')


# ------------------------------------------------------------------------------------------- the design

def case_id(c):
    skip = ('op', 'dtype', 'K', 'V', 'N', 'id', 'seed', 'expect')
    opts = ','.join(f'{k}={c[k]}' for k in sorted(c) if k not in skip)
    return f"{c['op']}|{c['dtype']}|K{c['K']}|V{c['V']}|N{c['N']}|{opts}"


def design(ops=None, dtypes=DTYPES, Ks=KS, Vs=VS, Ns=NS):
    """Deterministic covering design. Per op and dtype, every K gets one V and one setting of the options
    (rotating, so that every value of V and of each option appears with every dtype) and runs at N = 65 and
    N = 1000; the other N values re-use some of those settings (N is not a compile-time constant of any kernel:
    one compile serves all N of a setting, which is what keeps the sweep within one call). A rotation that is
    no valid combination of options (``invalid_reason``) is repaired by changing the fewest axes; a value that
    the repairs pushed out gets a setting of its own (at N = 65). The thin gla wrappers run at K in {64, 128}
    only (their kernels are chunk_gla's)."""
    cases = []
    for op, axes in OP_AXES.items():
        if ops and op not in ops:
            continue
        names = sorted(axes)
        kk = Ks if op not in WRAPPERS else tuple(k for k in (64, 128) if k in Ks) or Ks[:1]
        width = max([len(kk), len(Vs)] + [len(v) for v in axes.values()])
        for d, dtype in enumerate(dtypes):
            settings = []
            for i in range(width):   # setting i: value i (shifted per axis) of every axis
                c = {'op': op, 'dtype': dtype, 'K': kk[(i + d) % len(kk)], 'V': Vs[(i + d) % len(Vs)]}
                for j, a in enumerate(names):
                    c[a] = axes[a][(i + j * (i // len(axes[a]) + 1)) % len(axes[a])]
                settings.append(_repair(c, axes))
            extra = []
            for a in names:   # values the repairs removed: one setting each, the axis held at that value
                for j, v in enumerate(axes[a]):
                    if not any(c[a] == v for c in settings + extra):
                        extra.append(_repair(dict(settings[(j + d) % len(settings)], **{a: v}), axes, keep=(a,)))
            Nmain = [n for n in (65, 1000) if n in Ns]
            for c in settings:
                cases += [dict(c, N=n) for n in Nmain]
            cases += [dict(c, N=Nmain[0] if Nmain else Ns[0]) for c in extra]
            for i, n in enumerate(n for n in Ns if n not in Nmain):
                cases.append(dict(settings[(3 * i + d) % len(settings)], N=n))
    seen, out = set(), []
    for c in cases:
        if c.get('packed') and c['N'] == 1:
            c['packed'] = False
        if c['op'] in NO_V:
            c['V'] = 0
        c['id'] = case_id(c)
        if c['id'] not in seen:
            seen.add(c['id'])
            out.append(c)
    return out


# Arguments an op cannot take: each must raise a ValueError whose message holds ``expect``, before any Triton
# launch (issue 15). (op, mutation, expect); the mutation: case overrides, then a change of the built inputs.
INVALID = (
    ('linear_attn', 'linfusion_without_normalize', "norm='linfusion'"),
    ('linear_attn', 'head_dim_above_max', 'head dim K'),
    ('linear_attn', 'integer_q', 'q must be float32, float16 or bfloat16'),
    ('chunk_gla', 'mixed_dtypes', 'must share one dtype'),
    ('chunk_gla', 'vector_gate_scalar_g', "gate='vector' needs g"),
    ('chunk_gla', 'u_with_gv', 'cannot be combined'),
    ('chunk_gla', 'state_shape', 'initial_state must be'),
    ('chunk_rwkv6', 'head_dim_above_max', 'head dim K'),
    ('gsa', 'g_shape', 'g must have the shape of s'),
    ('gsa', 'slots_above_max', 'slot count M'),
    ('hgrn', 'g_shape', 'g must have the shape of x'),
    ('hgrn', 'packed_with_batch', 'cu_seqlens needs packed inputs'),
    ('delta_rule', 'beta_shape', 'beta must be'),
    ('delta_rule', 'cu_seqlens_range', 'cu_seqlens must rise'),
    ('gated_delta_rule', 'g_per_key', 'g must be [B, N, H]'),
    ('gated_delta_rule', 'cu_seqlens_device', 'on one device'),
    ('layer_norm', 'gate_shape', 'gate must have the shape of x'),
    ('layer_norm', 'weight_shape', 'weight must be [C]'),
    ('short_conv', 'taps_above_max', 'weight must be [C, W]'),
    ('short_conv', 'packed_with_batch', 'cu_seqlens needs packed inputs'),
)


def _other_device(torch, x):
    return x.to('meta') if x.device.type == 'cpu' else x.cpu()


# mutation: (case overrides, change of the inputs t (rounded to the dtype) and extra (cu_seqlens) in place)
MUTATIONS = {
    'linfusion_without_normalize': ({'normalize': False, 'norm': 'linfusion'}, None),
    'head_dim_above_max': ({'K': 260}, None),
    'integer_q': ({}, lambda torch, t, e: t.update(q=t['q'].to(torch.int32))),
    'mixed_dtypes': ({}, lambda torch, t, e: t.update(k=t['k'].to(
        torch.float16 if t['q'].dtype != torch.float16 else torch.bfloat16))),
    'vector_gate_scalar_g': ({'gate': 'vector'}, lambda torch, t, e: t.update(g=t['g'][..., 0].contiguous())),
    'u_with_gv': ({'extra': 'u'}, lambda torch, t, e: t.update(gv=torch.zeros_like(t['v']))),
    'state_shape': ({'h0': True}, lambda torch, t, e: t.update(h0=t['h0'][..., :-1].contiguous())),
    'g_shape': ({}, lambda torch, t, e: t.update(g=t['g'][..., :-1].contiguous())),
    'slots_above_max': ({'M': 300}, None),
    'packed_with_batch': ({'packed': True}, lambda torch, t, e: t.update(  # the token inputs (hgrn: x, g)
        {n: t[n].expand(2, *t[n].shape[1:]).contiguous() for n in ('x', 'g') if n in t})),
    'beta_shape': ({}, lambda torch, t, e: t.update(beta=t['beta'][..., :1].contiguous())),
    'cu_seqlens_range': ({'packed': True}, lambda torch, t, e: e.update(
        cu_seqlens=torch.cat([e['cu_seqlens'][:-1], e['cu_seqlens'][-1:] - 1]))),
    'g_per_key': ({}, lambda torch, t, e: t.update(g=t['g'][..., None].expand(*t['q'].shape).contiguous())),
    'cu_seqlens_device': ({'packed': True}, lambda torch, t, e: e.update(
        cu_seqlens=_other_device(torch, e['cu_seqlens']))),
    'gate_shape': ({'gated': True}, lambda torch, t, e: t.update(gate=t['gate'][..., :-1].contiguous())),
    'weight_shape': ({'affine': 'weight'}, lambda torch, t, e: t.update(w=t['w'][:-1].contiguous())),
    'taps_above_max': ({'width': 17}, None),
}


def invalid_cases(ops=None, dtype='bfloat16'):
    """The INVALID list as cases (bf16, K 64, V 48, N 65, the op's first option values, then the overrides)."""
    out = []
    for op, mut, expect in INVALID:
        if ops and op not in ops:
            continue
        c = dict({'op': op, 'dtype': dtype, 'K': 64, 'V': 0 if op in NO_V else 48, 'N': 65},
                 **{a: v[0] for a, v in OP_AXES[op].items()})
        if op == 'chunk_gla':
            c.update(gate='scalar', extra='plain')
        c.update(MUTATIONS[mut][0], invalid=mut)
        c['id'] = case_id(c)
        c['expect'] = expect
        out.append(c)
    return out


def risky(c):
    return c['dtype'] != 'float32' and c['K'] >= RISKY_K


K_PRIORITY = (64, 128, 256, 16, 96, 32, 192, 48)      # the order in which K values are reached
DTYPE_PRIORITY = ('bfloat16', 'float32', 'float16')

# Cost model of a worker group (compile time dominates; GPU time is small): seconds for the first case of a
# setting at K = 64 while 14 workers compile at once on the H200 host (first sweep, docs/benchmarks/ops_sweep.md),
# the share of that a further case of the group costs (another setting or another N re-specialises most kernels),
# and the growth with K (the delta rule's 'ieee' dots at K > 64 spill; the other kernels barely grow).
FIRST_S = {'linear_attn': 11, 'chunk_gla': 14, 'chunk_linear_attn': 10, 'chunk_simple_gla': 11,
           'chunk_retention': 9, 'chunk_rwkv6': 11.5, 'gsa': 17, 'hgrn': 4.5, 'delta_rule': 12.5,
           'gated_delta_rule': 12.5, 'layer_norm': 3, 'short_conv': 3, 'sum_rows': 2}
NEXT_SHARE = {'linear_attn': 0.2, 'chunk_gla': 0.4, 'chunk_linear_attn': 0.45, 'chunk_simple_gla': 0.45,
              'chunk_retention': 0.45, 'chunk_rwkv6': 0.5, 'gsa': 0.6, 'hgrn': 0.3, 'delta_rule': 0.6,
              'gated_delta_rule': 0.6, 'layer_norm': 0.5, 'short_conv': 0.5, 'sum_rows': 0.3}
K_GROWTH = {'delta': {16: 0.6, 32: 0.7, 48: 0.9, 64: 1.0, 96: 1.8, 128: 3.0, 192: 4.8, 256: 6.5},
            'other': {16: 0.8, 32: 0.85, 48: 0.9, 64: 1.0, 96: 1.1, 128: 1.15, 192: 1.25, 256: 1.3}}
FP32_FACTOR = 1.3
WORKER_START_S = 6      # python, torch, triton and CUDA start of a worker
HEAVY_S = 60            # a group above this runs first in its shard, longest first
SPLIT_S = 200           # a group above this is split into one worker per case (parallel compiles, more in all)
MERGE_S = 30            # groups below this (same op, dtype and risk) share a worker, up to this much in all


def case_cost(c, first=True):
    """Estimated seconds of case ``c``: a compile of its kernels (``first``) or a re-specialisation."""
    if c.get('invalid'):
        return 0.5
    fam = 'delta' if 'delta' in c['op'] else 'other'
    s = FIRST_S[c['op']] * K_GROWTH[fam].get(c['K'], 1.0) * (FP32_FACTOR if c['dtype'] == 'float32' else 1.0)
    return s if first else s * NEXT_SHARE[c['op']]


def group_cost(cases):
    return WORKER_START_S + sum(case_cost(c, i == 0) for i, c in enumerate(cases))


def groups_of(cases):
    """Worker groups: one per op, dtype and K (the cases of a group share their kernels' compiled
    specialisations; the 16-bit K >= 96 groups are named '-risky'), the invalid-argument cases one group of their
    own; a group estimated above SPLIT_S seconds becomes one group per case. Order: by K (the common head sizes
    64 and 128 first, then the extremes), then dtype, then op, so that a run cut by the deadline has covered
    every op at the most used sizes. Each group carries its estimate ``est`` (seconds, ``group_cost``)."""
    groups, inval = {}, [c for c in cases if c.get('invalid')]
    for c in cases:
        if not c.get('invalid'):
            groups.setdefault((c['op'], c['dtype'], c['K']), []).append(c)
    out = [{'name': 'invalid-args', 'cases': inval, 'rank': (-1,), 'est': group_cost(inval)}] if inval else []
    for (op, dt, K), cs in groups.items():
        cs.sort(key=lambda c: c['N'])
        r = '-risky' if risky(cs[0]) else ''
        rank = (K_PRIORITY.index(K) if K in K_PRIORITY else len(K_PRIORITY),
                DTYPE_PRIORITY.index(dt) if dt in DTYPE_PRIORITY else 3, list(OP_AXES).index(op))
        parts = [[c] for c in cs] if group_cost(cs) > SPLIT_S and len(cs) > 1 else [cs]
        for i, part in enumerate(parts):
            out.append({'name': f"{op}-{dt}-K{K}" + (f'-part{i + 1}' if len(parts) > 1 else '') + r,
                        'cases': part, 'rank': rank + (i,), 'est': group_cost(part)})
    out.sort(key=lambda g: g['rank'])
    return _merge_small(out)


def _merge_small(groups):
    """Groups estimated below MERGE_S seconds of one op, dtype and risk share a worker (in K-priority order, up
    to MERGE_S seconds of cases): one worker start instead of several."""
    out, open_ = [], {}
    for g in groups:
        c = g['cases'][0] if g['cases'] else None
        if c is None or c.get('invalid') or g['est'] >= MERGE_S:
            out.append(g)
            continue
        key = (c['op'], c['dtype'], g['name'].endswith('-risky'))
        m = open_.get(key)
        if m is not None and m['est'] + g['est'] - WORKER_START_S <= MERGE_S:
            m['cases'] = m['cases'] + g['cases']
            m['est'] += g['est'] - WORKER_START_S
            m['name'] = m['name'].replace('-risky', '') + '+K' + str(c['K']) + ('-risky' if key[2] else '')
        else:
            m = open_[key] = dict(g)
            out.append(m)
    return out


def makespan(groups, jobs):
    """Estimated wall seconds of running ``groups`` in order on ``jobs`` workers (list scheduling)."""
    free = [0.0] * max(1, jobs)
    for g in groups:
        i = min(range(len(free)), key=free.__getitem__)
        free[i] += g['est']
    return max(free)


def shard(groups, n):
    """Splits the groups into ``n`` shards of about equal estimated cost (longest first, each to the shard with
    the least so far; the invalid-argument group to the first). Within a shard the groups above HEAVY_S run
    first, longest first, so that the deadline cannot cut them; the rest keep the K-priority order."""
    shards = [[] for _ in range(n)]
    load = [0.0] * n
    for g in sorted(groups, key=lambda g: (g['name'] != 'invalid-args', -g['est'], g['rank'])):
        i = 0 if g['name'] == 'invalid-args' else min(range(n), key=load.__getitem__)
        shards[i].append(g)
        load[i] += g['est']
    return [sorted(s, key=lambda g: (0, -g['est']) if g['est'] > HEAVY_S else (1, g['rank'])) for s in shards]


def describe_shards(shards, jobs):
    """One line per shard: groups, cases, estimated worker-seconds and wall seconds on ``jobs`` workers, and what
    it covers (op: dtype K values)."""
    lines = []
    for i, s in enumerate(shards):
        cover = {}
        for g in s:
            for c in g['cases']:
                if not c.get('invalid'):
                    cover.setdefault(c['op'], {}).setdefault(c['dtype'], set()).add(c['K'])
        what = '; '.join(f"{op} " + ' '.join(f"{DTYPE_SHORT[d]}:{','.join(map(str, sorted(ks)))}"
                                             for d, ks in sorted(dts.items())) for op, dts in cover.items())
        inv = sum(len(g['cases']) for g in s if g['name'] == 'invalid-args')
        lines.append(f"shard {i + 1}/{len(shards)}: {len(s)} groups, {sum(len(g['cases']) for g in s)} cases"
                     f"{f' ({inv} invalid-argument)' if inv else ''}, est. {sum(g['est'] for g in s):.0f} "
                     f"worker-s, {makespan(s, jobs):.0f} s on {jobs} workers; heavy first: "
                     f"{', '.join(g['name'] for g in s if g['est'] > HEAVY_S) or 'none'}; covers {what}")
    return lines


DTYPE_SHORT = {'float32': 'fp32', 'bfloat16': 'bf16', 'float16': 'fp16'}


# --------------------------------------------------------------------------------------------- one case

# A reference whose norm is at or below this share of the case scale (``case_scales``) is judged by absolute error:
# relative error is ill-posed there (an exact 0, or float64 rounding noise ~1e-16 of the scale, of a quantity
# that is 0 in exact arithmetic); the smallest true gradients of the sweep (dg after -20 log gates) are ~1e-9 of it.
ABS_FLOOR = 1e-13


def _pair(torch, x, ref):
    """``((x, ref), None)`` in float64, or ``(None, e)`` with the error to report instead: None when both are None,
    inf when the shapes differ, nan when x is not finite. A gradient that autograd reports as None (the input
    reaches no output, as RWKV6's gate of a one-token sequence without a final state) is zero: zeros of the
    other's shape stand in for it."""
    if x is None and ref is None:
        return None, None
    if x is None:
        ref = ref.detach().double()
        x = torch.zeros_like(ref)
    else:
        x = x.detach().double()
        ref = torch.zeros_like(x) if ref is None else ref.detach().double()
    if x.shape != ref.shape:
        return None, float('inf')
    if not bool(torch.isfinite(x).all()):
        return None, float('nan')
    return (x, ref), None


def _ratio(dn, rn):
    return dn / rn if rn > 0 else (0.0 if dn == 0 else float('inf'))


def rel_err(torch, x, ref):
    """``||x - ref|| / ||ref||`` in float64 (``_pair``'s value instead where it gives one; inf for a non-zero x
    against a zero ref)."""
    p, e = _pair(torch, x, ref)
    return e if p is None else _ratio((p[0] - p[1]).norm().item(), p[1].norm().item())


def max_abs_err(torch, x, ref):
    """``max |x - ref|`` in float64 (``_pair``'s value instead where it gives one): recorded for every output, the
    magnitude that a relative error cannot give when the reference is zero."""
    p, e = _pair(torch, x, ref)
    return e if p is None else ((p[0] - p[1]).abs().max().item() if p[0].numel() else 0.0)


def representable(torch, ref, dtype, x=None):
    """The float64 reference as an output of ``dtype`` can hold it. Elements below the dtype's smallest normal
    (fp16: 6.1e-5; fp32 and bf16: 1.2e-38), where its spacing is absolute (fp16: 6e-8, so a gate gradient of
    ~1e-9 is 0 in any fp16 kernel): without ``x``, ``ref`` rounded to the dtype (to nearest); with ``x`` (the
    output), the one of the two dtype values next to ``ref`` that is nearer to ``x`` (either is a faithful
    rounding; which of them a kernel gives turns on its last fp32 bits: a value 1e-3 off in fp32 rounds to the
    other one for some elements, a whole step there). Every other element exact. Only fp16 outputs change in
    practice."""
    ref = ref.detach().double()
    if dtype == torch.float64 or not dtype.is_floating_point:
        return ref
    fi = torch.finfo(dtype)
    small = ref.abs() < fi.tiny
    if x is None:
        return torch.where(small, ref.to(dtype).double(), ref)
    step = fi.tiny * fi.eps   # the subnormal spacing: 2^-24 (fp16), 2^-133 (bf16), 2^-149 (fp32)
    lo, hi = torch.floor(ref / step) * step, torch.ceil(ref / step) * step
    return torch.where(small, torch.minimum(torch.maximum(x.detach().double(), lo), hi), ref)


def judged_err(torch, x, ref, scale=None, absolute=False):
    """The error a case is judged by: ``||x - R|| / ||ref||`` with ``R = representable(ref, x's dtype, x)``:
    where the dtype cannot represent the float64 reference (subnormal and underflowing elements) R is the dtype
    value next to it on x's side, so a faithfully rounded output scores 0 there instead of ~1; an output off by
    more (noise, a zeroed gradient that the dtype could hold, cancellation error above the subnormal spacing)
    still scores its distance beyond that value, relative to the float64 norm; elsewhere R is the reference.
    When ``||ref||`` is at or below ``ABS_FLOOR * scale`` (zero: an input that reaches no output; ``scale`` from
    ``case_scales``), or ``absolute`` (``Op.cancelled``), the relative error is ill-posed and the absolute one is
    judged: ``||x - R|| / scale``.
    A None gradient counts as zeros (``_pair``)."""
    p, e = _pair(torch, x, ref)
    if p is None:
        return e
    xd, rd = p
    dn = (xd - representable(torch, rd, x.dtype if x is not None else torch.float64, xd)).norm().item()
    rn = rd.norm().item()
    return dn / scale if scale and (absolute or rn <= ABS_FLOOR * scale) else _ratio(dn, rn)


def case_scales(torch, pairs):
    """Per output / gradient name, the scale its absolute error is judged against when its own reference is zero
    or tiny (``judged_err``): the largest RMS of the case's other float64 references (outputs and gradients, e.g.
    dq, dk, dv for dg), times the square root of its own element count, i.e. the norm it would have if its
    elements were as large as those. None when no other reference is non-zero."""
    stats = {}
    for k, (x, ref) in pairs.items():
        if ref is not None:
            r = ref.detach().double()
            n = r.norm().item()
            if r.numel() and n > 0 and math.isfinite(n):
                stats[k] = n / math.sqrt(r.numel())
    out = {}
    for k, (x, ref) in pairs.items():
        t = ref if ref is not None else x
        rms = [v for j, v in stats.items() if j != k]
        out[k] = max(rms) * math.sqrt(t.numel()) if rms and t is not None else None
    return out


def prepare(torch, spec, c, dev):
    """Float64 inputs of case ``c`` (initial states included) and ``extra`` (``cu_seqlens``)."""
    gen = torch.Generator(device=dev).manual_seed(c.get('seed', 0) + zlib.crc32(c['id'].encode()))
    t64, extra = spec.make(torch, c, gen, dev)
    if c.get('packed'):
        extra['cu_seqlens'] = _cu(torch, c['N'], dev)
    S = (extra['cu_seqlens'].numel() - 1) if 'cu_seqlens' in extra else B
    if c.get('h0'):
        K, V = c['K'], c['V']
        if spec.name == 'gsa':
            t64['h0k'] = torch.randn(S, H, K, c['M'], generator=gen, dtype=torch.float64, device=dev)
            t64['h0v'] = torch.randn(S, H, c['M'], V, generator=gen, dtype=torch.float64, device=dev)
        elif spec.name == 'hgrn':
            t64['h0'] = torch.randn(S, H * K, generator=gen, dtype=torch.float64, device=dev)
        else:
            t64['h0'] = torch.randn(S, H, K, V, generator=gen, dtype=torch.float64, device=dev)
    return t64, extra, gen


def run_case(torch, spec, c, dev, impl):
    """One case: returns the record (judged and raw errors per output / gradient, status)."""
    if c.get('invalid'):
        return run_invalid(torch, spec, c, dev, impl)
    dtype = getattr(torch, c['dtype'])
    t64, extra, gen = prepare(torch, spec, c, dev)
    # kernel inputs in the dtype (states in fp32); the reference gets float64 copies of the rounded values
    tk = {n: (x.float() if n.startswith('h0') else x.to(dtype)).detach().requires_grad_() for n, x in t64.items()}
    tr = {n: x.detach().double().requires_grad_() for n, x in tk.items()}
    out = {k: v for k, v in spec.run(tk, c, extra, impl).items() if v is not None}
    ref = {k: v for k, v in spec.ref(tr, c, extra).items() if v is not None}
    pairs = {k: (out.get(k), ref.get(k)) for k in sorted(set(out) | set(ref))}
    ws = {k: torch.randn(ref[k].shape, generator=gen, dtype=torch.float64, device=dev).to(out[k].dtype)
          for k in out if k in ref}
    lk = sum((out[k].double() * ws[k].double()).sum() for k in ws)
    lr = sum((ref[k] * ws[k].double()).sum() for k in ws)
    gk = torch.autograd.grad(lk, list(tk.values()), allow_unused=True)
    gr = torch.autograd.grad(lr, list(tr.values()), allow_unused=True)
    for n, a, b in zip(tk, gk, gr):
        pairs['d' + n] = (a, b)
    scales = case_scales(torch, pairs)
    cancelled = set(spec.cancelled(c))
    errs = {k: judged_err(torch, a, b, scales[k], k in cancelled) for k, (a, b) in pairs.items()}
    raw = {k: rel_err(torch, a, b) for k, (a, b) in pairs.items()}
    max_abs = {k: max_abs_err(torch, a, b) for k, (a, b) in pairs.items()}
    # the outputs judged by absolute error (reference zero or tiny), with the scale they were judged against
    absolute = {k: scales[k] for k, (a, b) in pairs.items() if errs[k] is not None and scales[k] and
                (k in cancelled or b is None or b.detach().double().norm().item() <= ABS_FLOOR * scales[k])}
    tol = tolerance(spec.name, c['dtype'])
    worst = max((e if math.isfinite(e) else math.inf for e in errs.values() if e is not None), default=0.0)
    worst_raw = max((e if math.isfinite(e) else math.inf for e in raw.values() if e is not None), default=0.0)
    bad = {k: e for k, e in errs.items() if e is not None and not e < tol}
    return {'status': 'fail' if bad else 'pass', 'errors': errs, 'raw_errors': raw, 'max_abs': max_abs,
            'absolute': absolute, 'worst': worst, 'worst_raw': worst_raw,
            'message': f'above {tol}: {sorted(bad)}' if bad else ''}


class _LaunchCounter:
    """Counts Triton kernel launches (compiled and interpreted) while active."""

    def __enter__(self):
        self.n, self.saved = 0, []
        try:
            from triton.runtime import interpreter, jit
            classes = [jit.JITFunction, interpreter.InterpretedFunction]
        except Exception:   # noqa: BLE001 - no triton: nothing can launch
            classes = []
        for cls in classes:
            orig = cls.run

            def run(fn_self, *a, _orig=orig, **kw):
                self.n += 1
                return _orig(fn_self, *a, **kw)
            self.saved.append((cls, orig))
            cls.run = run
        return self

    def __exit__(self, *exc):
        for cls, orig in self.saved:
            cls.run = orig
        return False


def run_invalid(torch, spec, c, dev, impl='op'):
    """An argument the op cannot take: passes when the public op raises a ValueError holding ``c['expect']``
    before any Triton launch (``impl='triton'``: with the op's backend forced to Triton, as on CPU under the
    interpreter)."""
    dtype = getattr(torch, c['dtype'])
    t64, extra, _ = prepare(torch, spec, c, dev)
    t = {n: x.float() if n.startswith('h0') else x.to(dtype) for n, x in t64.items()}
    change = MUTATIONS[c['invalid']][1]
    if change is not None:
        change(torch, t, extra)
    err = None
    backend = 'triton' if impl == 'triton' else 'auto'
    # every launch through Triton's run, where _LaunchCounter sees it (no cached-handle launches)
    with _LaunchCounter() as launches, spec.ops.common.kernel_options(backend=backend, launch_cache=False):
        try:
            spec.run(t, c, extra, 'op')
        except ValueError as e:
            err = e
    msg = f'ValueError: {str(err)[:200]}' if err is not None else 'accepted (no ValueError)'
    ok = err is not None and c['expect'] in str(err) and launches.n == 0
    why = '' if ok else (f'{launches.n} Triton launches before the error; ' if launches.n else '') + \
        (f"message without {c['expect']!r}; " if err is not None and c['expect'] not in str(err) else '')
    return {'status': 'pass' if ok else 'fail', 'errors': {}, 'worst': None, 'launches': launches.n,
            'message': (why + msg) if not ok else msg}


# ----------------------------------------------------------------------------------------------- worker

def worker(args):
    """Runs one group's cases (``--worker FILE``) and appends a JSON line per finished case to ``--results``."""
    faulthandler.enable()   # a fatal signal (an abort at exit included) prints the Python stack into the log
    import torch
    ops = bind_ops(args.ops_source)
    specs = {s.name: s for s in make_ops(ops)}
    with open(args.worker) as f:
        group = json.load(f)
    dev = args.device
    if dev == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False   # the float64 reference runs plain torch; keep it exact
    with open(args.results, 'a') as res:
        for c in group['cases']:
            if time.time() > group['deadline']:
                break
            res.write(json.dumps({'id': c['id'], 'status': 'started'}) + '\n')
            res.flush()
            if os.environ.get('CHECK_OPS_GPU_DIE_AT') == c['id']:   # tests: a worker dying inside a case
                os._exit(139)
            t0 = time.time()
            try:
                rec = run_case(torch, specs[c['op']], c, dev, group.get('impl', 'op'))
                if dev == 'cuda':
                    torch.cuda.synchronize()
            except Exception as e:   # noqa: BLE001 - a case's error is its result
                rec = {'status': 'error', 'errors': {}, 'worst': None,
                       'message': f'{type(e).__name__}: {str(e)[:300]}',
                       'trace': traceback.format_exc(limit=4)[-1500:]}
                if any(m in str(e) for m in STICKY_ERRORS):
                    rec['status'] = 'crash'
                    res.write(json.dumps({'id': c['id'], **rec, 'seconds': time.time() - t0}) + '\n')
                    res.flush()
                    os._exit(3)   # the CUDA context is lost: the parent reports the rest of the group
            rec.update(id=c['id'], seconds=round(time.time() - t0, 3))
            res.write(json.dumps(rec) + '\n')
            res.flush()
    return 0


# ------------------------------------------------------------------------------------------------ parent

def run_groups(groups, args, work_dir, deadline, exits=None):
    """Runs the groups as worker subprocesses, ``args.jobs`` at a time (a group may carry ``env``, ``impl``,
    ``wrap`` (a command prefix) and ``tag``). A worker that dies (illegal memory access, signal) has its running
    case recorded as a crash and its remaining cases re-queued in a fresh worker (up to 3 times per group).
    Workers still running ``args.grace`` s past the deadline are killed (their case: 'timeout'). A worker that
    exits non-zero between cases (e.g. aborting at interpreter exit) is appended to ``exits`` with its log's tail.
    Returns {case id: record}."""
    pending = [dict(g, restarts=0) for g in groups]
    running, records = [], {}
    wdir = work_dir
    os.makedirs(wdir, exist_ok=True)

    def start(g):
        gname = f"{g.get('tag', 'sweep')}-{g['name']}" + (f"-r{g['restarts']}" if g['restarts'] else '')
        gfile, rfile = (os.path.join(wdir, gname + ext) for ext in ('.json', '.jsonl'))
        with open(gfile, 'w') as f:
            json.dump({'cases': g['cases'], 'deadline': deadline, 'impl': g.get('impl', 'op')}, f)
        open(rfile, 'w').close()
        cmd = [sys.executable, os.path.abspath(__file__), '--worker', gfile, '--results', rfile,
               '--device', args.device] + (['--ops-source', args.ops_source] if args.ops_source else [])
        log = open(os.path.join(wdir, gname + '.log'), 'w')
        env = dict(os.environ, **g.get('env', {}))
        env.setdefault('TRITON_CACHE_DIR', os.path.join(REPO, 'work_dirs', 'triton_cache'))   # shared by workers
        p = subprocess.Popen(g.get('wrap', []) + cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        return {'p': p, 'g': g, 'rfile': rfile, 'log': log, 'name': gname, 'killed': False}

    def collect(w):
        w['log'].close()
        g, rc = w['g'], w['p'].returncode
        done, started = {}, None
        with open(w['rfile']) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if r.get('status') == 'started':
                    started = r['id']
                else:
                    done[r['id']] = r
                    if started == r['id']:
                        started = None
        with open(os.path.join(wdir, w['name'] + '.log'), errors='replace') as f:
            tail = f.read()[-3000:]
        crashed = next((cid for cid, r in done.items() if r['status'] == 'crash'), None)
        if started and not w['killed'] and rc != 0:
            done[started] = {'status': 'crash', 'errors': {}, 'worst': None,
                             'message': f"worker {w['name']} died (exit {rc}) in this case; log: {tail[-300:]}"}
            crashed = started
        elif started and w['killed']:
            done[started] = {'status': 'timeout', 'errors': {}, 'worst': None,
                             'message': f'still running {args.grace} s past the deadline: killed'}
        rest = [c for c in g['cases'] if c['id'] not in done]
        for c in g['cases']:
            if c['id'] in done:
                r = done[c['id']]
                r.update({k: v for k, v in c.items() if k != 'id'}, id=c['id'], group=w['name'], exit=rc)
                records[c['id']] = r
        if rest and crashed and g['restarts'] < 3 and time.time() < deadline:
            pending.insert(0, dict(g, cases=rest, restarts=g['restarts'] + 1))
            why = None
        else:
            why = (f"not reached: worker {w['name']} died at {crashed}" if crashed else
                   'not reached: deadline' if rc == 0 or w['killed'] else f"worker {w['name']} exited {rc}")
        for c in rest if why else []:
            records[c['id']] = dict({k: v for k, v in c.items()}, status='not_run', errors={}, worst=None,
                                    message=why, group=w['name'], exit=rc)
        if rc != 0 and not started and not crashed and not w['killed'] and exits is not None:
            exits.append({'group': w['name'], 'exit': rc, 'cases_done': len(done), 'log_tail': tail})
        n_ok = sum(r['status'] == 'pass' for r in done.values())
        print(f"[{w['name']}] exit {rc}: {n_ok}/{len(done)} passed" + (f', crash at {crashed}' if crashed else '')
              + (f', {len(rest)} re-queued' if rest and not why else ''), flush=True)

    while pending or running:
        while pending and len(running) < args.jobs:
            g = pending.pop(0)
            if time.time() > deadline:   # never started: listed, not run
                for c in g['cases']:
                    records[c['id']] = dict(c, status='not_run', errors={}, worst=None, group=g['name'],
                                            message='not reached: deadline')
                continue
            running.append(start(g))
        time.sleep(0.2)
        for w in list(running):
            if w['p'].poll() is None and time.time() > deadline + args.grace:
                w['killed'] = True
                w['p'].kill()
                w['p'].wait()
            if w['p'].poll() is not None:
                running.remove(w)
                collect(w)
    return records


def find_sanitizer():
    return shutil.which('compute-sanitizer') or next(
        (p for p in ('/usr/local/cuda/bin/compute-sanitizer', '/opt/nvidia/cuda/bin/compute-sanitizer')
         if os.path.exists(p)), None)


def memcheck_groups(cases, work_dir, binary, only=None):
    """One group per case under ``compute-sanitizer --tool memcheck``: per op, the first 16-bit K >= 96 case
    and the first fp32 case at N = 65 (kernels run many times slower under the sanitizer); ``only``: the ids
    of those to run here (a shard runs the ones whose groups it compiles)."""
    subset, seen = [], set()
    for c in cases:
        key = (c['op'], risky(c))
        if c['N'] == 65 and key not in seen and (risky(c) or c['dtype'] == 'float32') and c['op'] not in WRAPPERS \
                and not c.get('invalid'):
            seen.add(key)
            if only is None or c['id'] in only:
                subset.append(dict(c, id=c['id'] + '|memcheck'))
    wrap = [binary, '--tool', 'memcheck', '--error-exitcode', '7',
            '--log-file', os.path.join(work_dir, 'memcheck-%p.log')]
    # no caching allocator: every tensor is its own allocation, so an access past one is outside any allocation
    env = {'PYTORCH_NO_CUDA_MEMORY_CACHING': '1'}
    return [{'name': f'{i:02d}-{c["op"]}', 'cases': [c], 'wrap': wrap, 'tag': 'memcheck', 'env': env}
            for i, c in enumerate(subset)]


COMPILE_SNIPPET = r'''
import json, sys, torch
sys.path.insert(0, {tools!r})
import check_ops_gpu as T
ops = T.bind_ops({src!r})
res = []
for spec in T.make_ops(ops):
    axes = T.OP_AXES[spec.name]
    c = {{'op': spec.name, 'dtype': 'bfloat16', 'K': 64, 'V': 48, 'N': 65, 'seed': 0}}
    c.update({{a: v[0] for a, v in axes.items()}})
    c['final'] = True
    c['id'] = T.case_id(c)
    try:
        torch._dynamo.reset()   # one fresh compile per op (the same fn code object serves every op)
        gen = torch.Generator(device={dev!r}).manual_seed(0)
        t64, extra = spec.make(torch, c, gen, {dev!r})
        tk = {{n: x.to(torch.bfloat16).requires_grad_() for n, x in t64.items()}}
        def fn(*xs):
            out = spec.run(dict(zip(tk, xs)), c, extra, 'op')
            return tuple(v for v in out.values() if v is not None)
        eager = fn(*tk.values())
        ge = torch.autograd.grad(sum(o.float().sum() for o in eager), list(tk.values()), allow_unused=True)
        cfn = torch.compile(fn, fullgraph=True)
        comp = cfn(*tk.values())
        gc = torch.autograd.grad(sum(o.float().sum() for o in comp), list(tk.values()), allow_unused=True)
        errs = [T.rel_err(torch, a, b) for a, b in zip(comp, eager)] + \
               [T.rel_err(torch, a, b) for a, b in zip(gc, ge) if b is not None]
        worst = max([e for e in errs if e is not None], default=0.0)
        res.append({{'op': spec.name, 'status': 'pass' if worst < 1e-2 else 'fail', 'worst': worst}})
    except Exception as e:
        res.append({{'op': spec.name, 'status': 'error', 'message': f'{{type(e).__name__}}: {{str(e)[:400]}}'}})
    print(json.dumps(res[-1]), flush=True)
'''


def start_compile(args):
    """``torch.compile(fn, fullgraph=True)`` forward + backward of each op vs eager (bf16, K 64, N 65) in a child
    process (needs the ops registered as custom ops)."""
    code = COMPILE_SNIPPET.format(tools=os.path.dirname(os.path.abspath(__file__)), src=args.ops_source,
                                  dev=args.device)
    return subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)


def finish_compile(p, timeout):
    try:
        out, err = p.communicate(timeout=max(1, timeout))
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        rc = 'timeout'
    ops = []
    for x in out.splitlines():
        try:
            ops.append(json.loads(x))
        except json.JSONDecodeError:
            pass
    return {'exit': rc, 'ops': ops, 'stderr_tail': err[-1500:]}


def _fmt(x):
    return '-' if x is None else ('nan/inf' if not math.isfinite(x) else f'{x:.1e}')


def table(records):
    """op x dtype: cases run / passed / worst judged error / worst raw error / failures."""
    rows = {}
    for r in records:
        rows.setdefault((r['op'], r['dtype']), []).append(r)
    lines = ['| op | dtype | run | passed | worst error | worst raw error | failures |',
             '|---|---|---|---|---|---|---|']
    for (op, dt), rs in sorted(rows.items()):
        run = [r for r in rs if r['status'] != 'not_run']
        ok = [r for r in run if r['status'] == 'pass']
        ws = [_fmt(max((r[k] for r in run if r.get(k) is not None), default=None)) for k in ('worst', 'worst_raw')]
        bad = [f"{r['status']}: {r['id'].split('|', 2)[2]}" + (f" ({r['message'][:80]})" if r.get('message') else '')
               for r in run if r['status'] != 'pass']
        nr = len(rs) - len(run)
        lines.append(f"| {op} | {dt} | {len(run)}{f' (+{nr} not reached)' if nr else ''} | {len(ok)} | {ws[0]} | "
                     f"{ws[1]} | {'<br>'.join(bad[:6]) + (f'<br>... {len(bad) - 6} more' if len(bad) > 6 else '')} |")
    return '\n'.join(lines)


def rounding_notes(records):
    """The outputs whose raw error is at or above the tolerance but whose judged error (against the reference
    rounded to the dtype where the dtype cannot hold it) is below: the passes that the rounding decided."""
    out = []
    for r in records:
        tol = tolerance(r['op'], r['dtype'])
        for k, raw in (r.get('raw_errors') or {}).items():
            j = r['errors'].get(k)
            if raw is not None and j is not None and not raw < tol and j < tol and k not in r.get('absolute', {}):
                out.append(f"{r['id']} {k}: raw {_fmt(raw)}, judged {_fmt(j)}")
    return out


def absolute_notes(records):
    """The outputs judged by absolute error (float64 reference zero or below ABS_FLOOR of the case scale): the
    largest |x - ref|, the scale and the judged error of each."""
    return [f"{r['id']} {k}: max |x - ref| {_fmt(r['max_abs'].get(k))}, scale {_fmt(s)}, judged "
            f"{_fmt(r['errors'].get(k))}" for r in records for k, s in sorted((r.get('absolute') or {}).items())]


def invalid_line(records):
    run = [r for r in records if r['status'] != 'not_run']
    bad = [f"{r['op']} {r['invalid']}: {r['status']} ({r.get('message', '')[:120]})" for r in run
           if r['status'] != 'pass']
    return (f"Arguments an op cannot take (ValueError naming it, before any Triton launch): {len(run)} run, "
            f"{len(run) - len(bad)} passed" + (f" ({len(records) - len(run)} not reached)" if len(run) < len(records)
                                               else '') + ('; ' + '; '.join(bad) if bad else ''))


def smoke_cases():
    """Tiny CPU cases: each op once through its public op (the reference on CPU) and through its Triton entry
    point (the interpreter), plus one 16-bit K = 96 case to exercise the risky-group worker, and the
    invalid-argument cases (at N = 5)."""
    base = {'dtype': 'float32', 'K': 16, 'V': 16, 'N': 5}
    cases = []
    for op, axes in OP_AXES.items():
        c = dict(base, op=op, **{a: v[0] for a, v in axes.items()})
        c.update(h0=True, final=True) if 'h0' in c else None
        if op == 'chunk_gla':
            c.update(gate='vector', extra='u', reverse=True)
        if op in NO_V:
            c['V'] = 0
        if op == 'layer_norm':
            c.update(rms=True, gated=True)
        cases.append(c)
    cases.append(dict(base, op='gated_delta_rule', dtype='bfloat16', K=96, V=24, N=5,
                      **{a: v[0] for a, v in OP_AXES['gated_delta_rule'].items()}))
    for c in cases:
        c['id'] = case_id(c)
    for c in invalid_cases(dtype='float32'):
        c = dict(c, N=5, V=16 if c['V'] else 0, K=16 if c['K'] == 64 else c['K'])
        c['id'] = case_id(c)
        cases.append(c)
    return cases


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default='work_dirs/check_ops_gpu', help='results.json and table.md go here')
    ap.add_argument('--work-dir', default=None,
                    help='worker files (case lists, logs; default: a new folder under the system temp dir)')
    ap.add_argument('--deadline', type=float, default=380,
                    help='seconds after which no case is started (workers are killed --grace s later)')
    ap.add_argument('--grace', type=float, default=60)
    ap.add_argument('--jobs', type=int, default=0, help='workers at once (default: min(14, CPUs - 2))')
    ap.add_argument('--ops', nargs='*', help='only these ops (names as in the table)')
    ap.add_argument('--shard', default='1/1', help='I/N: run every N-th worker group from the I-th (1-based), '
                    'to spread the sweep over N device calls')
    ap.add_argument('--rest', nargs='+', metavar='RESULTS_JSON',
                    help="run only the cases that these results.json list as not_run or timeout (not --shard)")
    ap.add_argument('--memcheck', action='store_true', help='also a subset under compute-sanitizer memcheck')
    ap.add_argument('--compile', action='store_true', help='also torch.compile(fullgraph=True) vs eager per op')
    ap.add_argument('--smoke', action='store_true', help='CPU: tiny cases, reference and interpreter paths')
    ap.add_argument('--list', action='store_true', help='print the cases and exit')
    ap.add_argument('--device', default=None)
    ap.add_argument('--ops-source', default=None, help='folder bound as vla_mm.ops (default: ./ops, else installed)')
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    ap.add_argument('--results', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.device = args.device or ('cpu' if args.smoke else 'cuda')
    if args.worker:
        return worker(args)
    t0 = time.time()
    args.jobs = args.jobs or max(1, min(14, (os.cpu_count() or 1) - 2))
    out_dir = os.path.abspath(args.out)
    deadline = t0 + args.deadline
    report = {'started': time.strftime('%Y-%m-%d %H:%M:%S'), 'device': args.device, 'smoke': args.smoke,
              'argv': sys.argv[1:]}
    compile_proc = None
    if args.smoke:
        cases = smoke_cases()
        work_dir = _work_dir(args)
        groups = [{'name': 'reference', 'cases': cases, 'env': {'VLA_OPS_REFERENCE': '1'}, 'tag': 'smoke-op'}]
        tri = [dict(c, id=c['id'] + '|triton') for c in cases if c['op'] not in WRAPPERS]
        for r in (False, True):   # one worker for the interpreter cases, one for the risky kind (K >= 96)
            groups.append({'name': 'risky' if r else 'all', 'cases': [c for c in tri if risky(c) == r],
                           'env': {'TRITON_INTERPRET': '1'}, 'impl': 'triton', 'tag': 'smoke-triton'})
    else:
        i, n = (int(x) for x in args.shard.split('/'))
        if not 1 <= i <= n:
            ap.error(f'--shard {args.shard}: I must be in 1..N')
        every = design(args.ops)
        shards = shard(groups_of(every + invalid_cases(args.ops)), n)
        plan = describe_shards(shards, args.jobs)
        groups = shards[i - 1]
        if args.rest:   # the cases earlier calls did not finish, as one shard
            left = set()
            for path in args.rest:
                with open(path) as f:
                    left |= {r['id'] for r in json.load(f)['cases'] if r['status'] in ('not_run', 'timeout')}
            groups = shard(groups_of([c for c in every + invalid_cases(args.ops) if c['id'] in left]), 1)[0]
            plan = describe_shards([groups], args.jobs)
        cases = [c for g in groups for c in g['cases']]
        report['shards'] = plan
        if args.list:
            for c in cases:
                print(c['id'])
            print(len(cases), 'cases')
            print('\n'.join(plan))
            return 0
        print('\n'.join(plan) + ('\nrunning the rest' if args.rest else f'\nrunning shard {i}/{n}'), flush=True)
        report['env'] = _env_info()
        work_dir = _work_dir(args)
        if args.memcheck:
            binary = find_sanitizer()
            report['memcheck'] = {'available': binary is not None, 'binary': binary}
            if binary:
                # after the first wave: their kernels are then mostly compiled (shared Triton cache)
                mc = memcheck_groups(every, work_dir, binary, only={c['id'] for c in cases})
                groups = groups[:args.jobs] + mc + groups[args.jobs:]
        if args.compile:
            compile_proc = start_compile(args)
    exits = []
    records = run_groups(groups, args, work_dir, deadline, exits)
    report['work_dir'] = work_dir
    report['worker_exits'] = exits
    allrecs = [r for r in records.values() if not r['id'].endswith('|memcheck')]
    inval = [r for r in allrecs if r.get('invalid')]
    sweep = [r for r in allrecs if not r.get('invalid')]
    for r in allrecs:
        if r['id'].endswith('|triton'):
            r['op'] += ' [triton]'
    if 'memcheck' in report:
        report['memcheck']['cases'] = [dict(r, memcheck_errors=r.get('exit') == 7) for r in records.values()
                                       if r['id'].endswith('|memcheck')]
        report['memcheck']['logs'] = {}
        for name in sorted(os.listdir(work_dir)):   # the sanitizer's own reports, first lines of each
            if name.startswith('memcheck-') and name.endswith('.log'):
                with open(os.path.join(work_dir, name), errors='replace') as f:
                    report['memcheck']['logs'][name] = f.read()[:4000]
    if compile_proc is not None:
        report['compile'] = finish_compile(compile_proc, deadline + args.grace - time.time())
    report['seconds'] = round(time.time() - t0, 1)
    os.makedirs(out_dir, exist_ok=True)
    report['cases'] = allrecs
    report['summary'] = {s: sum(r['status'] == s for r in allrecs)
                         for s in ('pass', 'fail', 'error', 'crash', 'timeout', 'not_run')}
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
        json.dump(report, f, indent=1, default=str)
    extra = [invalid_line(inval)] if inval else []
    notes = rounding_notes(sweep)
    extra.append(f'Judged against the reference rounded to the output dtype (either neighbour) where the dtype '
                 f'cannot hold it (raw error at or above the tolerance, judged below): {len(notes)} outputs' +
                 (': ' + '; '.join(notes[:20]) + (f'; ... {len(notes) - 20} more' if len(notes) > 20 else '')
                  if notes else ''))
    if 'memcheck' in report:
        m = report['memcheck']
        extra.append('compute-sanitizer memcheck: ' + ('not found on this machine (PATH, /usr/local/cuda/bin)'
                     if not m['available'] else '; '.join(
                         f"{r['op']} {r['dtype']} K{r['K']} V{r['V']} N{r['N']}: "
                         f"{'MEMCHECK ERRORS (results.json: memcheck.logs)' if r['memcheck_errors'] else r['status']}"
                         for r in m['cases'])))
    if 'compile' in report:
        c = report['compile']
        extra.append('torch.compile(fullgraph=True) vs eager (bf16, K 64, N 65): ' + ('; '.join(
            f"{r['op']}: {r['status']}" + (f" ({r.get('message', '')[:100]})" if r['status'] != 'pass' else
                                           f" ({r['worst']:.1e})") for r in c['ops']) or 'no result')
            + f" (exit {c['exit']})")
    s = report['summary']
    if exits:
        extra.append(f'Workers that exited non-zero after their last case ({len(exits)}; results.json '
                     f'"worker_exits" has their logs): ' + ', '.join(f"{e['group']} ({e['exit']})" for e in exits))
    head = (f"{len(allrecs)} cases in {report['seconds']} s: {s['pass']} passed, {s['fail']} failed, "
            f"{s['error']} errors, {s['crash']} crashed, {s['timeout']} timed out, {s['not_run']} not reached")
    md = table(sweep)
    with open(os.path.join(out_dir, 'table.md'), 'w') as f:
        f.write(head + '\n\n' + md + '\n' + ''.join('\n' + e + '\n' for e in extra))
    absn = absolute_notes(sweep)
    extra.append(f'Judged by absolute error ||x - ref|| / scale (float64 reference zero or below {ABS_FLOOR:g} of the '
                 f'case scale): {len(absn)} outputs' + (': ' + '; '.join(absn[:20]) +
                                                         (f'; ... {len(absn) - 20} more' if len(absn) > 20 else '')
                                                         if absn else ''))
    print('\n'.join(extra))
    print(head)
    print(md)
    return 0 if s['fail'] + s['error'] + s['crash'] + s['timeout'] + len(exits) == 0 else 1


def _work_dir(args):
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        return os.path.abspath(args.work_dir)
    return tempfile.mkdtemp(prefix='check_ops_gpu_')


def _env_info():
    try:
        import torch
        import triton
        return {'torch': torch.__version__, 'triton': triton.__version__,
                'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                'launch_cache': os.environ.get('VLA_OPS_LAUNCH_CACHE', '')}  # the workers' (env inherited)
    except Exception as e:   # noqa: BLE001
        return {'error': str(e)}


if __name__ == '__main__':
    sys.exit(main())
