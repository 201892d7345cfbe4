"""GPU sweep of every public op of ``vla_mm.ops``: forward and every gradient against a float64 reference.

    python tools/check_ops_gpu.py --out $OUT                      # the sweep (stops starting cases at --deadline)
    python tools/check_ops_gpu.py --out $OUT --memcheck --compile # plus compute-sanitizer and torch.compile parts
    python tools/check_ops_gpu.py --smoke --out DIR               # CPU: tiny cases, reference + interpreter paths

Ops: ``linear_attn``, ``chunk_gla`` (gate none / scalar / vector, bonus ``u``, value gates ``gv``), its wrappers
(``chunk_linear_attn``, ``chunk_simple_gla``, ``chunk_retention``, ``chunk_rwkv6``), ``gsa``, ``hgrn``,
``delta_rule`` without and with ``g`` (``gated_delta_rule``). Axes: dtype {fp32, bf16, fp16}, K {16 ... 256},
ragged V, N {1, 63, 64, 65, 1000, 4097} and each op's options (reverse, initial state, final state, packed
sequences with one-token sequences, random / strong (-20) / weak (~-1e-3) log gates). The product is too large:
a deterministic covering design runs every K with every dtype at N = 65 and N = 1000 for each op, and every
value of every other axis with every dtype (rotating the rest).

Each case: inputs drawn in float64 and rounded to the dtype; the op on CUDA tensors of that dtype; the family's
reference on float64 copies of the same rounded inputs (on the GPU: plain torch); one backward with the same
random cotangents (rounded to the outputs' dtypes); relative error ``||x - ref|| / ||ref||`` of every output
and every input gradient; pass below 1e-4 (fp32) / 1e-2 (bf16, fp16); NaN / Inf fail; an exception fails its
case only. All cases run in worker subprocesses (one group per op, and one group per op for the risky cases,
16-bit at K >= 96, several groups at once): an illegal memory access kills only its worker, whose finished
cases are kept and whose other cases are reported as failed with the crash. Outputs under ``--out``:
``results.json`` (every case) and ``table.md`` (op x dtype: cases run / passed / worst error / failures),
the table printed last. Imports only torch, triton and ``vla_mm.ops`` (the ``ops/`` folder of this checkout,
else the installed ``vla_mm/ops``; the ``vla_mm`` package itself and MMEngine are not imported).
"""
import argparse
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
# errors after which the CUDA context is lost: the worker records the case and exits
STICKY_ERRORS = ('illegal memory access', 'CUDA error', 'Triton Error [CUDA]', 'misaligned address',
                 'unspecified launch failure', 'illegal instruction')
FAMILIES = ('linear_attn', 'gla', 'gsa', 'hgrn', 'delta_rule')
RISKY_K = 96          # 16-bit cases at K >= this run in their own worker per op (issue 15's crash)
B, H = 1, 2


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
    uses_v = True

    def __init__(self, ops):
        self.ops = ops

    def applicable(self, case):
        return True


class LinearAttn(Op):
    name = 'linear_attn'
    axes = {'feature_map': ('elu1', 'relu', 'focused', 'identity'), 'normalize': (True, False),
            'norm': ('standard', 'linfusion'), 'packed': (False, True)}

    def make(self, torch, c, gen, dev):
        K, V, N = c['K'], c['V'], c['N']
        t = {n: torch.randn(B, N, H, d, generator=gen, dtype=torch.float64, device=dev)
             for n, d in (('q', K), ('k', K), ('v', V))}
        return t, {}

    def kwargs(self, c, extra):
        normalize = c['normalize'] and c['feature_map'] != 'identity'   # identity + normalize: ill-posed sums
        return dict(feature_map=c['feature_map'], normalize=normalize, norm=c['norm'],
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


class ChunkGLA(_Recurrent):
    name = 'chunk_gla'
    axes = dict(_Recurrent.axes, gate=('none', 'scalar', 'vector'), extra=('plain', 'u', 'gv'))

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
        if impl == 'triton':
            o, ht = self.ops.gla.chunk_gla_triton(t['q'], t['k'], t['v'], gk=t.get('g'), **self._args(t, c, extra))
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
    axes = dict(_Recurrent.axes, M=(16, 40))

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
        return self._out(*fn(t['q'], t['k'], t['v'], t['s'], t['g'], **self._args(t, c, extra)))

    def ref(self, t, c, extra):
        return self._out(*self.ops.gsa.gsa_recurrent_reference(t['q'], t['k'], t['v'], t['s'], t['g'],
                                                               **self._args(t, c, extra)))


class HGRN(_Recurrent):
    name = 'hgrn'
    axes = dict(_Recurrent.axes, gated_input=(True, False))
    uses_v = False

    def make(self, torch, c, gen, dev):
        D = H * c['K']
        return {'x': torch.randn(B, c['N'], D, generator=gen, dtype=torch.float64, device=dev),
                'g': _log_gate(torch, (B, c['N'], D), c['gates'], gen, dev)}, {}

    def _args(self, t, c, extra):
        return dict(initial_state=t.get('h0'), output_final_state=c['final'], cu_seqlens=extra.get('cu_seqlens'),
                    reverse=c['reverse'], gated_input=c['gated_input'])

    def run(self, t, c, extra, impl):
        fn = self.ops.hgrn.hgrn_triton if impl == 'triton' else self.ops.hgrn.hgrn
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
        self.axes = dict(_Recurrent.axes) if gated else {k: v for k, v in _Recurrent.axes.items() if k != 'gates'}

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
        o, ht = fn(t['q'], t['k'], t['v'], t['beta'], t.get('g'), **self._args(t, c, extra))
        return {'o': o, 'final_state': ht}

    def ref(self, t, c, extra):
        o, ht = self.ops.delta_rule.delta_rule_chunked(t['q'], t['k'], t['v'], t['beta'], t.get('g'),
                                                       **self._args(t, c, extra))
        return {'o': o, 'final_state': ht}


def make_ops(ops):
    return [LinearAttn(ops), ChunkGLA(ops), GLAWrapper(ops, 'chunk_linear_attn', 'none'),
            GLAWrapper(ops, 'chunk_simple_gla', 'scalar'), GLAWrapper(ops, 'chunk_retention', 'none'),
            GLAWrapper(ops, 'chunk_rwkv6', 'vector', 'u'), GSA(ops), HGRN(ops), DeltaRule(ops, False),
            DeltaRule(ops, True)]


OP_AXES = {'linear_attn': LinearAttn.axes, 'chunk_gla': ChunkGLA.axes, 'chunk_linear_attn': _Recurrent.axes,
           'chunk_simple_gla': _Recurrent.axes, 'chunk_retention': _Recurrent.axes, 'chunk_rwkv6': _Recurrent.axes,
           'gsa': GSA.axes, 'hgrn': HGRN.axes,
           'delta_rule': {k: v for k, v in _Recurrent.axes.items() if k != 'gates'},
           'gated_delta_rule': _Recurrent.axes}
WRAPPERS = ('chunk_linear_attn', 'chunk_simple_gla', 'chunk_retention', 'chunk_rwkv6')


# ------------------------------------------------------------------------------------------- the design

def case_id(c):
    opts = ','.join(f'{k}={c[k]}' for k in sorted(c) if k not in ('op', 'dtype', 'K', 'V', 'N', 'id', 'seed'))
    return f"{c['op']}|{c['dtype']}|K{c['K']}|V{c['V']}|N{c['N']}|{opts}"


def design(ops=None, dtypes=DTYPES, Ks=KS, Vs=VS, Ns=NS):
    """Deterministic covering design. Per op and dtype, every K gets one V and one setting of the options
    (rotating, so that every value of V and of each option appears with every dtype) and runs at N = 65 and
    N = 1000; the other N values re-use some of those settings (N is not a compile-time constant of any kernel:
    one compile serves all N of a setting, which is what keeps the sweep within one call). The thin gla
    wrappers run at K in {64, 128} only (their kernels are chunk_gla's)."""
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
                settings.append(c)
            Nmain = [n for n in (65, 1000) if n in Ns]
            for c in settings:
                cases += [dict(c, N=n) for n in Nmain]
            for i, n in enumerate(n for n in Ns if n not in Nmain):
                cases.append(dict(settings[(3 * i + d) % len(settings)], N=n))
    seen, out = set(), []
    for c in cases:
        if c.get('packed') and c['N'] == 1:
            c['packed'] = False
        if c['op'] == 'hgrn':
            c['V'] = 0
        c['id'] = case_id(c)
        if c['id'] not in seen:
            seen.add(c['id'])
            out.append(c)
    return out


def risky(c):
    return c['dtype'] != 'float32' and c['K'] >= RISKY_K


K_PRIORITY = (64, 128, 256, 16, 96, 32, 192, 48)      # the order in which K values are reached
DTYPE_PRIORITY = ('bfloat16', 'float32', 'float16')


def groups_of(cases):
    """Worker groups: one per op, dtype and K (the cases of a group share their kernels' compiled
    specialisations; the 16-bit K >= 96 groups are named '-risky'). Order: by K (the common head sizes 64 and
    128 first, then the extremes), then dtype, then op, so that a run cut by the deadline has covered every op
    at the most used sizes."""
    groups = {}
    for c in cases:
        groups.setdefault((c['op'], c['dtype'], c['K']), []).append(c)
    out = []
    for (op, dt, K), cs in groups.items():
        cs.sort(key=lambda c: c['N'])
        r = '-risky' if risky(cs[0]) else ''
        out.append({'name': f"{op}-{dt}-K{K}{r}", 'cases': cs,
                    'rank': (K_PRIORITY.index(K) if K in K_PRIORITY else len(K_PRIORITY), DTYPE_PRIORITY.index(dt)
                             if dt in DTYPE_PRIORITY else 3, list(OP_AXES).index(op))})
    out.sort(key=lambda g: g['rank'])
    return out


# --------------------------------------------------------------------------------------------- one case

def rel_err(torch, x, ref):
    if x is None or ref is None:
        return None if x is None and ref is None else float('inf')
    x = x.detach().double()
    ref = ref.detach().double()
    if x.shape != ref.shape:
        return float('inf')
    if not bool(torch.isfinite(x).all()):
        return float('nan')
    rn = ref.norm().item()
    dn = (x - ref).norm().item()
    return dn / rn if rn > 0 else (0.0 if dn == 0 else float('inf'))


def run_case(torch, spec, c, dev, impl):
    """One case: returns the record (errors per output / gradient, status)."""
    dtype = getattr(torch, c['dtype'])
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
    # kernel inputs in the dtype (states in fp32); the reference gets float64 copies of the rounded values
    tk = {n: (x.float() if n.startswith('h0') else x.to(dtype)).detach().requires_grad_() for n, x in t64.items()}
    tr = {n: x.detach().double().requires_grad_() for n, x in tk.items()}
    out = {k: v for k, v in spec.run(tk, c, extra, impl).items() if v is not None}
    ref = {k: v for k, v in spec.ref(tr, c, extra).items() if v is not None}
    errs = {k: rel_err(torch, out.get(k), ref.get(k)) for k in sorted(set(out) | set(ref))}
    ws = {k: torch.randn(ref[k].shape, generator=gen, dtype=torch.float64, device=dev).to(out[k].dtype)
          for k in out if k in ref}
    lk = sum((out[k].double() * ws[k].double()).sum() for k in ws)
    lr = sum((ref[k] * ws[k].double()).sum() for k in ws)
    gk = torch.autograd.grad(lk, list(tk.values()), allow_unused=True)
    gr = torch.autograd.grad(lr, list(tr.values()), allow_unused=True)
    for n, a, b in zip(tk, gk, gr):
        errs['d' + n] = rel_err(torch, a, b)
    tol = TOL[c['dtype']]
    worst = max((e if math.isfinite(e) else math.inf for e in errs.values() if e is not None), default=0.0)
    bad = {k: e for k, e in errs.items() if e is not None and not e < tol}
    return {'status': 'fail' if bad else 'pass', 'errors': errs, 'worst': worst,
            'message': f'above {tol}: {sorted(bad)}' if bad else ''}


# ----------------------------------------------------------------------------------------------- worker

def worker(args):
    """Runs one group's cases (``--worker FILE``) and appends a JSON line per finished case to ``--results``."""
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

def run_groups(groups, args, work_dir, deadline):
    """Runs the groups as worker subprocesses, ``args.jobs`` at a time (a group may carry ``env``, ``impl``,
    ``wrap`` (a command prefix) and ``tag``). A worker that dies (illegal memory access, signal) has its running
    case recorded as a crash and its remaining cases re-queued in a fresh worker (up to 3 times per group).
    Workers still running ``args.grace`` s past the deadline are killed (their case: 'timeout').
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
        with open(os.path.join(wdir, w['name'] + '.log')) as f:
            tail = f.read()[-600:]
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


def memcheck_groups(cases, work_dir, binary):
    """One group per case under ``compute-sanitizer --tool memcheck``: per op, the first 16-bit K >= 96 case
    and the first fp32 case at N = 65 (kernels run many times slower under the sanitizer)."""
    subset, seen = [], set()
    for c in cases:
        key = (c['op'], risky(c))
        if c['N'] == 65 and key not in seen and (risky(c) or c['dtype'] == 'float32') and c['op'] not in WRAPPERS:
            seen.add(key)
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


def table(records):
    rows = {}
    for r in records:
        rows.setdefault((r['op'], r['dtype']), []).append(r)
    lines = ['| op | dtype | run | passed | worst error | failures |', '|---|---|---|---|---|---|']
    for (op, dt), rs in sorted(rows.items()):
        run = [r for r in rs if r['status'] != 'not_run']
        ok = [r for r in run if r['status'] == 'pass']
        worst = max((r['worst'] for r in run if r.get('worst') is not None and math.isfinite(r['worst'])),
                    default=None)
        nonfinite = any(r.get('worst') is not None and not math.isfinite(r['worst']) for r in run)
        bad = [f"{r['status']}: {r['id'].split('|', 2)[2]}" + (f" ({r['message'][:80]})" if r.get('message') else '')
               for r in run if r['status'] != 'pass']
        ws = 'nan/inf' if nonfinite else ('-' if worst is None else f'{worst:.1e}')
        nr = len(rs) - len(run)
        lines.append(f"| {op} | {dt} | {len(run)}{f' (+{nr} not reached)' if nr else ''} | {len(ok)} | {ws} | "
                     f"{'<br>'.join(bad[:6]) + (f'<br>... {len(bad) - 6} more' if len(bad) > 6 else '')} |")
    return '\n'.join(lines)


def smoke_cases():
    """Tiny CPU cases: each op once through its public op (the reference on CPU) and through its Triton entry
    point (the interpreter), plus one 16-bit K = 96 case to exercise the risky-group worker."""
    base = {'dtype': 'float32', 'K': 16, 'V': 16, 'N': 5}
    cases = []
    for op, axes in OP_AXES.items():
        c = dict(base, op=op, **{a: v[0] for a, v in axes.items()})
        c.update(h0=True, final=True) if 'h0' in c else None
        if op == 'chunk_gla':
            c.update(gate='vector', extra='u', reverse=True)
        if op == 'hgrn':
            c['V'] = 0
        cases.append(c)
    cases.append(dict(base, op='gated_delta_rule', dtype='bfloat16', K=96, V=24, N=5,
                      **{a: v[0] for a, v in OP_AXES['gated_delta_rule'].items()}))
    for c in cases:
        c['id'] = case_id(c)
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
        groups = groups_of(design(args.ops))[i - 1::n]
        cases = [c for g in groups for c in g['cases']]
        if args.list:
            for c in cases:
                print(c['id'])
            print(len(cases), 'cases')
            return 0
        report['env'] = _env_info()
        work_dir = _work_dir(args)
        if args.memcheck:
            binary = find_sanitizer()
            report['memcheck'] = {'available': binary is not None, 'binary': binary}
            if binary:
                # after the first wave: their kernels are then mostly compiled (shared Triton cache)
                groups = groups[:args.jobs] + memcheck_groups(cases, work_dir, binary) + groups[args.jobs:]
        if args.compile:
            compile_proc = start_compile(args)
    records = run_groups(groups, args, work_dir, deadline)
    report['work_dir'] = work_dir
    allrecs = [r for r in records.values() if not r['id'].endswith('|memcheck')]
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
    extra = []
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
    head = (f"{len(allrecs)} cases in {report['seconds']} s: {s['pass']} passed, {s['fail']} failed, "
            f"{s['error']} errors, {s['crash']} crashed, {s['timeout']} timed out, {s['not_run']} not reached")
    md = table(allrecs)
    with open(os.path.join(out_dir, 'table.md'), 'w') as f:
        f.write(head + '\n\n' + md + '\n' + ''.join('\n' + e + '\n' for e in extra))
    print('\n'.join(extra))
    print(head)
    print(md)
    return 0 if s['fail'] + s['error'] + s['crash'] + s['timeout'] == 0 else 1


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
                'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    except Exception as e:   # noqa: BLE001
        return {'error': str(e)}


if __name__ == '__main__':
    sys.exit(main())
