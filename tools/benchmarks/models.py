"""Model benchmark: train and inference throughput and peak memory of registered backbones beside timm's ViT-S,
eager and under ``torch.compile``, at several resolutions, in one process.

    source tools/device_prelude.sh && python3 tools/benchmarks/models.py --out $OUT [CONFIG | --backbone DICT]
        [--res 224,512,1024,2048,4096] [--batch 256,64,16,4,1] [--modes eager,compile] [--profile 1024]
        [--models ours,timm_op,timm_sdpa] [--deadline 510]
    # the zoo: each mixer's Small model as its own column beside timm's ViT-S (SDPA); scan-route costs
    source tools/device_prelude.sh && python3 tools/benchmarks/models.py --out $OUT --mixers gla,rwkv6,...|all
        [--routes uni,bi,cross] --modes eager [--profile 1024]
    # the results.json of several calls as one table and plot (no run; CPU)
    python tools/benchmarks/models.py --out DIR --merge A/results.json B/results.json ...
    python tools/benchmarks/models.py --smoke --out /tmp/models_smoke     # CPU, tiny sizes (CI)

Models, each an image classifier (backbone, mean pool over tokens, linear head, 1000 classes):
  ours       the config's backbone (default ``configs/linear_attn/linear-attn-s_8xb128_in1k.py``: the isotropic
             ViT-S with the ``linear_attn`` mixer), built through the MMEngine registry with ``img_size`` = the
             resolution, ``drop_path_rate`` 0 and mean pooling (``out_type='avg_featmap'``) where it takes them;
  <mixer>    (``--mixers``) the isotropic Small model of that zoo mixer: the backbone of its family base
             ``configs/_base_/models/isotropic/<mixer>-s.py`` (the one ``configs/<mixer>/*-s_8xb128_in1k.py``
             trains), built as ``ours`` is; ``<mixer>@<route>`` (``--routes``) the same model with
             ``scan=dict(type=route)`` in its backbone, as the ``*-bi`` / ``*-cross`` configs set it (directional
             mixers only: the others take no route);
  timm_op    timm's ``vit_small_patch16_224`` (no class token, final norm on every token, average pool: the same
             tokens and layers as ours) with our ``vla_mm.ops.linear_attn.linear_attn`` in each block's attention
             (timm's qkv / proj kept);
  timm_sdpa  the same timm ViT-S with its own attention (``F.scaled_dot_product_attention``);
  ours_fused_ln, ours_ln  (only when asked for) ``ours`` with the fused LayerNorm op at every size
             (``norm_cfg=dict(type='FusedLN', min_rows=0)``, ``vla_mm.ops.norm``; the default ``FusedLN`` takes
             the op from ``MIN_ROWS`` rows) / with torch's LayerNorm (``'LN'``): the A/B of the fused norm.
  ours_bias_grad  (only when asked for) ``ours`` with every linear layer a ``BiasGradLinear`` (its bias gradient
             from ``vla_mm.ops.reduce.sum_rows``, not torch's ``sum(0)``): that op's A/B in the model.
  <model>+cached  (only when asked for) any of our models timed with ``kernel_options(launch_cache=True)``
             (launches through the compiled kernels' cached handles): the launch cache's A/B in one process.
cuDNN's autotuner is on (``torch.backends.cudnn.benchmark``, as timm's own benchmark sets it: the patch
convolution's default algorithm took 2.2 ms a step at 1024 px; ``--no-cudnn-benchmark`` turns it off).
Train step: forward under bf16 autocast, cross-entropy, backward, AdamW step (fp32 weights). Inference:
``torch.inference_mode`` + bf16 autocast. After ``--warmup`` steps, three runs of ``--steps`` / 3 back-to-back
steps (CUDA events around each run), images/s = batch / (median run time / steps per run); peak memory =
``torch.cuda.max_memory_allocated`` over the timed steps (with CUDA graphs, ``--compile-mode reduce-overhead``:
over every step, since the graphs' memory is taken when they are recorded). Every case (model x resolution x eager/compile x
train/infer) catches and reports its own failure (an out-of-memory, a compile error); the eager cases all run
before any compiled one, and a case that would pass ``--deadline`` is skipped and recorded. ``--profile RES``:
torch.profiler of two train steps of each model (route variants aside) at RES (top kernels by CUDA time, the
share of the step's kernel time of each, ``aten::contiguous`` / copy counts), eager, and with ``--profile-modes
eager,compile`` also compiled (``profile_<RES>_compile.md``). ``--route-res 224,1024``: the route
variants only at these resolutions (the route-cost table needs no more). ``--host-probe 32``: one more train
case per model and mode at 32 px, batch 1, where the GPU has almost nothing to do: its step time is the host's
(Python, autograd, launches), tabled beside the timed steps (a step about as long is host-bound).
``--launch JSON``: our kernels' launch options for the whole run (``kernel_options(launch=...)``; the fused
norm's backward tiles, for one).

``--warm`` (default on CUDA): before the timed cases, one process per model (one block deep: the same shapes,
strides and launch choices as the full depth) runs a train step and an inference call at every resolution and
batch, ``--warm-jobs`` processes at once, so every Triton kernel is compiled in parallel into Triton's on-disk
cache and the timed process only loads it (a first compile of the delta-rule kernels takes 35-45 s); a case's
``*_first_s`` shows whether it did.
``--merge``: the rows of several calls' results.json (split by ``--mixers`` or ``--res``) in one report; each row
keeps its call, and ratios to timm SDPA and route costs are taken within one call (one process).
Writes log.txt, results.json (after every case), models.md, models.png and profile_<RES>.md under --out.
"""
import argparse
import ast
import contextlib
import copy
import gc
import glob
import inspect
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402

DEFAULT_CONFIG = osp.join(common.ROOT, 'configs', 'linear_attn', 'linear-attn-s_8xb128_in1k.py')
ZOO_BASES = osp.join(common.ROOT, 'configs', '_base_', 'models', 'isotropic')
TIMM_NAME = 'vit_small_patch16_224'
MODELS = ('ours', 'timm_op', 'timm_sdpa')
SDPA = 'timm_sdpa'
# ours with this norm_cfg: ours_fused_ln takes the fused op at every size (the default only from MIN_ROWS rows)
OURS_NORMS = {'ours_fused_ln': dict(type='FusedLN', eps=1e-6, min_rows=0), 'ours_ln': dict(type='LN', eps=1e-6)}
# ours with every linear layer's bias gradient from vla_mm.ops.reduce.sum_rows (BiasGradLinear)
BIAS_GRAD = 'ours_bias_grad'
CACHED = '+cached'   # model-name suffix: the same model timed with launch_cache=True
# ours has no class token and takes the final norm on every token before the mean: timm the same way
TIMM_KWARGS = dict(class_token=False, global_pool='avg', fc_norm=False)
SMOKE_ARCH = dict(embed_dims=32, num_layers=2, num_heads=2)


# ----------------------------------------------------------------------------------------------- models
class Classifier(nn.Module):
    """backbone -> last output mean-pooled over tokens -> linear head (what an image classifier times)."""

    def __init__(self, backbone, dim, num_classes=1000):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, num_classes)

    @staticmethod
    def pool(feats):
        f = feats[-1] if isinstance(feats, (tuple, list)) else feats
        if f.dim() == 4:  # [B, C, h, w]
            return f.mean((2, 3))
        return f.mean(1) if f.dim() == 3 else f  # [B, N, C] or already pooled [B, C]

    def forward(self, x):
        return self.head(self.pool(self.backbone(x)))


class TimmLinearAttention(nn.Module):
    """timm's ``Attention`` with ``vla_mm.ops.linear_attn.linear_attn`` in place of softmax attention: the same
    qkv and proj layers (and weights), the same [B, N, 3, H, D] split as our ``linear_attn`` mixer."""

    def __init__(self, attn, **op_kwargs):
        super().__init__()
        from vla_mm.ops.linear_attn import linear_attn
        self.num_heads = attn.num_heads
        self.qkv, self.proj, self.proj_drop = attn.qkv, attn.proj, attn.proj_drop
        self.op, self.op_kwargs = linear_attn, op_kwargs

    def forward(self, x, *args, **kwargs):  # timm passes attn_mask (None here) in newer versions
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)
        o = self.op(q, k, v, **self.op_kwargs)
        return self.proj_drop(self.proj(o.reshape(B, N, C)))


def backbone_cfg(a):
    """The backbone config dict: ``--backbone`` (a Python dict literal) or the config file's model.backbone."""
    if a.backbone:
        cfg = ast.literal_eval(a.backbone)
        if not isinstance(cfg, dict) or 'type' not in cfg:
            raise SystemExit(f'error: --backbone must be a dict literal with a type, got {a.backbone!r}')
        return cfg
    from vla_mm.utils.cli import UserError, load_config
    try:
        cfg = load_config(a.config, a.cfg_options)
    except UserError as e:
        raise SystemExit(f'error: {e}')
    if 'backbone' not in cfg.get('model', {}):
        raise SystemExit(f'error: {a.config} has no model.backbone')
    return cfg.model.backbone.to_dict()


def zoo_backbones(size='s'):
    """{mixer type: backbone dict} of the isotropic zoo's family bases at one size
    (``configs/_base_/models/isotropic/<mixer>-<size>.py``)."""
    from mmengine.config import Config
    out = {}
    for path in sorted(glob.glob(osp.join(ZOO_BASES, f'*-{size}.py'))):
        bb = Config.fromfile(path).backbone.to_dict()
        out[bb['mixer']['type']] = bb
    return out


def split_name(name):
    """'gla@bi' -> ('gla', 'bi'); 'gla' -> ('gla', 'uni')."""
    mixer, _, route = name.partition('@')
    return mixer, route or 'uni'


def is_directional(mixer):
    """Does the mixer's core take a scan route (``BaseMixer.directional``)?"""
    import vla_mm  # noqa: F401
    from vla_mm.registry import MIXERS
    return bool(getattr(MIXERS.get(mixer), 'directional', False))


def mixer_backbone(name, a):
    """The backbone dict of a zoo case name (``mixer`` or ``mixer@route``)."""
    mixer, route = split_name(name)
    cfg = copy.deepcopy(a.zoo[mixer])
    if route != 'uni':
        cfg['scan'] = dict(type=route)
    if a.smoke:
        cfg['arch'] = dict(SMOKE_ARCH)
    return cfg


def one_block(cfg, cls):
    """``cfg`` with its arch one block deep (the warm-up compiles the same kernels as the full depth)."""
    arch = cfg.get('arch', 'tiny')
    arch = dict(getattr(cls, 'arch_zoo', {}).get(arch, {})) if isinstance(arch, str) else dict(arch)
    if 'num_layers' in arch:
        arch['num_layers'] = 1
    elif 'depths' in arch:
        arch['depths'] = [1] * len(arch['depths'])
    else:
        return cfg
    return dict(cfg, arch=arch)


def build_ours(bcfg, res, a, device, layers=None):
    """The registered backbone (MMEngine registry, any scope) at resolution ``res`` plus a linear head
    (``layers=1``: one block deep)."""
    import vla_mm  # noqa: F401  (registers the vla_mm scope)
    from mmengine.registry import MODELS as REG
    cfg = copy.deepcopy(bcfg)
    cls = REG.get(cfg['type'])
    if cls is None:
        raise KeyError(f"backbone type {cfg['type']!r} is not registered")
    if layers == 1:
        cfg = one_block(cfg, cls)
    params = inspect.signature(cls).parameters
    for key, value in (('img_size', res), ('drop_path_rate', a.drop_path), ('out_type', 'avg_featmap')):
        if key in params and (key != 'drop_path_rate' or value is not None):
            cfg[key] = value
    backbone = REG.build(cfg).to(device)  # constructor initialisation: speed does not depend on init_weights()
    with torch.no_grad():
        dim = Classifier.pool(backbone(torch.zeros(1, cfg.get('in_channels', 3), res, res, device=device))).shape[-1]
    return Classifier(backbone, dim).to(device)


def build_timm(res, a, device, with_op, layers=None):
    import timm
    kw = dict(pretrained=False, num_classes=1000, img_size=res, drop_path_rate=a.drop_path or 0.0, **TIMM_KWARGS,
              **a.timm_kwargs)
    if layers is not None:
        kw['depth'] = layers
    model = timm.create_model(TIMM_NAME, **kw)
    if with_op:
        for blk in model.blocks:
            blk.attn = TimmLinearAttention(blk.attn, **a.op_kwargs)
    return model.to(device)


def build(name, res, a, device, bcfg, layers=None):
    name = name.removesuffix(CACHED)
    if name == 'ours':
        return build_ours(bcfg, res, a, device, layers)
    if name == BIAS_GRAD:
        from vla_mm.models.layers import use_bias_grad_op
        return use_bias_grad_op(build_ours(bcfg, res, a, device, layers))
    if name in OURS_NORMS:
        return build_ours(dict(bcfg, norm_cfg=OURS_NORMS[name]), res, a, device, layers)
    if name.startswith('timm_'):
        return build_timm(res, a, device, with_op=name == 'timm_op', layers=layers)
    return build_ours(mixer_backbone(name, a), res, a, device, layers)


def op_kwargs_of(bcfg):
    """Our mixer's op options (feature map, normalisation) for the timm+op model, so both run the same op."""
    mixer = bcfg.get('mixer') or {}
    return {k: mixer[k] for k in ('feature_map', 'normalize', 'focus_power') if k in mixer}


def case_names(a, names, notes):
    """The model columns: ``--models`` then, per ``--mixers`` entry, one per route it takes."""
    out = list(names)
    for mixer in a.mixers:
        directional = is_directional(mixer)
        for route in a.routes:
            if route == 'uni':
                out.append(mixer)
            elif directional:
                out.append(f'{mixer}@{route}')
    flat = [m for m in a.mixers if not is_directional(m)]
    if flat and any(r != 'uni' for r in a.routes):
        notes.append(f"{', '.join(flat)}: not directional, so no scan route applies (no route rows)")
    return out


# ----------------------------------------------------------------------------------------------- timing
def autocast(a, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.amp)


def train_step_fn(model, batch, res, a, device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    x = torch.randn(batch, 3, res, res, device=device)
    y = torch.randint(0, 1000, (batch, ), device=device)

    def step():
        with autocast(a, device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def infer_fn(model, batch, res, a, device):
    x = torch.randn(batch, 3, res, res, device=device)

    def run():
        with torch.inference_mode(), autocast(a, device):
            return model(x)
    return run


NOISY_SPREAD = 0.1  # models.md lists cases whose timed runs differ by more than this share of the median


def measure(fn, batch, a, device, graphs=False):
    """(images/s, ms per step, first-call s, peak GiB, spread) of ``fn``: after the warm-up, three runs of
    steps / 3 back-to-back calls (no synchronisation inside a run, so the host may run ahead as in training), the
    median run's time per call; spread = (slowest - fastest run) / median run. ``graphs`` (CUDA-graph replay:
    its memory pool is allocated when the graph is recorded, in the warm-up): peak over every call."""
    if graphs and device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    fn()
    common.synchronize(device)
    first = time.time() - t
    for _ in range(max(0, a.warmup - 1)):
        fn()
    if device.type == 'cuda' and not graphs:
        torch.cuda.reset_peak_memory_stats()
    per_run = max(1, a.steps // 3)

    def run():
        for _ in range(per_run):
            fn()
    times = common.time_calls(run, n=3, warmup=0, device=device)
    ms = sorted(times)[1] / per_run
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == 'cuda' else None
    return batch / (ms * 1e-3), ms, first, peak, (max(times) - min(times)) / sorted(times)[1]


def timed_at(name, res, a):
    """Is model ``name`` timed at ``res``? Route variants only at ``--route-res``."""
    return '@' not in name or a.route_res is None or res in a.route_res


def _error(e):
    return f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'


def _release(device):
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()


def in_mode(model, mode, a):
    """``model`` as a case of ``mode`` runs it: itself (eager) or ``torch.compile``d (``--compile-backend``,
    ``--compile-mode``, ``--fullgraph``)."""
    if mode != 'compile':
        return model
    return torch.compile(model, backend=a.compile_backend, mode=a.compile_mode, fullgraph=a.fullgraph)


def dynamo_graphs():
    """(graphs compiled, graph breaks) so far in this process, from dynamo's counters."""
    from torch._dynamo.utils import counters
    return counters['stats']['unique_graphs'], sum(counters['graph_break'].values())


def uses_graphs(mode, a):
    """Whether the compiled step replays CUDA graphs (``torch.compile``'s modes that record them)."""
    return mode == 'compile' and a.compile_mode in ('reduce-overhead', 'max-autotune')


def run_case(name, res, batch, mode, a, device, bcfg, kinds=None, host_profile=False):
    """One model at one resolution in one mode: train and inference figures (or the error of each); ``kinds``:
    of ``--kinds``; ``host_profile``: also a cProfile of train steps (``row['host_profile']``)."""
    from vla_mm.ops.common import kernel_options
    row = dict(model=name, res=res, batch=batch, mode=mode)
    t0 = time.time()
    model = None
    graphs0 = dynamo_graphs()
    cached = (lambda: kernel_options(launch_cache=True)) if name.endswith(CACHED) else contextlib.nullcontext
    try:
        model = build(name, res, a, device, bcfg)
        row['params_M'] = sum(p.numel() for p in model.parameters()) / 1e6
        run = in_mode(model, mode, a)
        for kind, make in (('train', train_step_fn), ('infer', infer_fn)):
            if kind not in (kinds or a.kinds):
                continue
            model.train(kind == 'train')
            try:
                fn = make(run, batch, res, a, device)
                with cached():
                    ips, ms, first, peak, spread = measure(fn, batch, a, device, graphs=uses_graphs(mode, a))
                row.update({f'{kind}_img_s': ips, f'{kind}_ms': ms, f'{kind}_first_s': first,
                            f'{kind}_peak_GiB': peak, f'{kind}_spread': spread})
                if host_profile and kind == 'train':
                    with cached():
                        row['host_profile'] = common.host_profile(fn, 5, device, rows=30)
            except Exception as e:  # noqa: BLE001  (an OOM or a compile failure of this case only)
                row[f'{kind}_error'] = _error(e)
            _release(device)
    except Exception as e:  # noqa: BLE001
        row['error'] = _error(e)
    del model
    if mode == 'compile':
        # graphs: one per compiled model and kind when nothing breaks it (a break adds graphs and host time)
        row['graphs'], row['graph_breaks'] = (n - n0 for n, n0 in zip(dynamo_graphs(), graphs0))
        torch._dynamo.reset()
    _release(device)
    row['case_s'] = time.time() - t0
    return row


def warm_one(name, a, device, bcfg, log):
    """One model, one block deep: a train step and an inference call at every resolution (and profile
    resolution) and its batch. Compiles the Triton kernels the timed cases launch into the cache (the batch is
    the timed one: launch choices such as the delta rule's state-kernel V block depend on it)."""
    todo = [(r, b) for r, b in zip(a.res, a.batch) if timed_at(name, r, a)]
    todo += [(r, 1) for r in a.profile if r not in a.res and '@' not in name]
    for res, batch in todo:
        t0, model = time.time(), None
        try:
            model = build(name, res, a, device, bcfg, layers=1)
            if 'train' in a.kinds or (res in a.profile and '@' not in name):
                model.train()
                train_step_fn(model, batch, res, a, device)()
            if 'infer' in a.kinds:
                model.eval()
                infer_fn(model, batch, res, a, device)()
            common.synchronize(device)
            log(f'warm {name} {res} batch {batch}: {time.time() - t0:.1f}s')
        except Exception as e:  # noqa: BLE001  (the timed case reports it)
            log(f'warm {name} {res} failed: {_error(e)}')
        del model
        _release(device)


def warm_all(names, a, argv, log, deadline):
    """Run :func:`warm_one` for every model that holds our ops, ``--warm-jobs`` processes at once (Triton
    compiles on the host: one process per model spreads them over the cores). Returns {name: summary}."""
    todo = [n for n in names if n != SDPA]
    if not todo:
        return {}
    jobs = a.warm_jobs or max(1, min(len(todo), (os.cpu_count() or 2) - 2))
    limit = time.time() + max(0.0, min(a.warm_seconds, deadline.left() - 60))
    tmp = tempfile.mkdtemp(prefix='models_warm_')  # not under --out: its files would crowd what comes back
    base = [sys.executable, osp.abspath(__file__)] + list(argv)
    pending, running, done = list(todo), [], {}
    log(f'warm-up: {len(todo)} processes, {jobs} at a time, until {max(0, limit - time.time()):.0f}s from now')
    while pending or running:
        while pending and len(running) < jobs and time.time() < limit:
            name = pending.pop(0)
            path = osp.join(tmp, name.replace('@', '_') + '.log')
            with open(path, 'w') as f:
                proc = subprocess.Popen(base + ['--warm-one', name, '--out', tmp], stdout=f, stderr=subprocess.STDOUT)
            running.append((name, proc, time.time(), path))
        time.sleep(0.5)
        for item in list(running):
            name, proc, t0, path = item
            if proc.poll() is None and time.time() < limit:
                continue
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            running.remove(item)
            with open(path) as f:
                fails = [ln.strip() for ln in f if ' failed' in ln or 'Error' in ln]
            done[name] = dict(rc=proc.returncode, seconds=round(time.time() - t0, 1), failures=fails[:3])
            log(f'warm {name}: rc={proc.returncode} {done[name]["seconds"]}s' + (f' {fails[:1]}' if fails else ''))
        if time.time() >= limit and not running:
            for name in pending:
                done[name] = dict(rc=None, seconds=None, failures=['not started (warm-up time spent)'])
            pending = []
    return done


def top_kernels(rows, n=3):
    """(kernel ms per step, [(name, ms, share)] of the ``n`` longest) from :func:`common.profile` rows: GPU
    activities only (kernels, copies), so no time is counted twice through its host op."""
    kern = sorted((r for r in rows if r.get('kernel')), key=lambda r: -r['ms_per_iter'])
    total = sum(r['ms_per_iter'] for r in kern) if kern else None
    return total, [(r['name'], r['ms_per_iter'], r['ms_per_iter'] / total if total else None) for r in kern[:n]]


def profile_tag(res, mode):
    """Key and file suffix of a profile: ``1024`` (eager) or ``1024_compile``."""
    return f'{res}' if mode == 'eager' else f'{res}_{mode}'


def profile_models(res, batch, a, device, bcfg, names, out, log, mode='eager'):
    """Two profiled train steps of each model at ``res`` (eager, or under ``torch.compile`` after two more warm-up
    steps so that no compile or recompile falls in the profile): top kernels, contiguous / copy counts."""
    md = [f'# Train-step profile at {res} px, batch {batch} (2 steps, {mode}, {a.env.get("device")})', '']
    summary = {}
    for name in names:
        def one():
            model = build(name, res, a, device, bcfg).train()
            step = train_step_fn(in_mode(model, mode, a), batch, res, a, device)
            if mode == 'compile':
                step()
                step()
            table, rows = common.profile(step, iters=2, row_limit=a.profile_rows, device=device)
            copies = {k: dict(count=sum(r['count'] for r in rows if r['name'] == k),
                              ms=sum(r['ms_per_iter'] for r in rows if r['name'] == k))
                      for k in ('aten::contiguous', 'aten::copy_', 'aten::clone')}
            kern = [r for r in rows if not r['name'].startswith(('aten::', 'autograd::', 'Optimizer', 'cuda'))
                    and 'copy' in r['name'].lower()]
            copies['copy kernels'] = dict(count=sum(r['count'] for r in kern), ms=sum(r['ms_per_iter'] for r in kern))
            total, top = top_kernels(rows, a.profile_rows)
            summary[name] = dict(copies=copies, top=rows[:a.profile_rows], kernel_ms=total,
                                 kernels=[dict(name=k, ms=ms, share=sh) for k, ms, sh in top])
            md.extend([f'## {name}', '', 'per train step: ' + ', '.join(
                f"{k} x{v['count']:.0f} ({v['ms']:.2f} ms)" for k, v in copies.items()), '',
                (f'kernel time per step {total:.2f} ms; longest: ' + '; '.join(
                    f'`{k[:80]}` {ms:.2f} ms ({sh:.0%})' for k, ms, sh in top[:5])) if top else
                'no GPU kernels recorded (CPU run)', '', '```', table, '```', ''])
        common.guarded(log, f'profile {name} {res}', one)
        _release(device)
    common.write_text(osp.join(out, f'profile_{profile_tag(res, mode)}.md'), '\n'.join(md))
    return summary


# ----------------------------------------------------------------------------------------------- report
def _rows_of(rows, mode, call=None):
    return [r for r in rows if r['mode'] == mode and (call is None or r.get('call', 0) == call) and 'probe' not in r]


def _lookup(rows, model, res, mode, call):
    return next((r for r in _rows_of(rows, mode, call) if r['model'] == model and r['res'] == res), None)


def _first_with(rows, model, res, mode, key):
    """The first row (in call order) of ``model`` at ``res`` that has ``key``, else the first at all."""
    cands = [r for r in _rows_of(rows, mode) if r['model'] == model and r['res'] == res]
    return next((r for r in cands if key in r), cands[0] if cands else None)


def vs_sdpa(pairs):
    """One phrase for a model's img/s ratios to timm SDPA over resolutions ``[(res, ratio)]``."""
    pairs = [(r, x) for r, x in pairs if x is not None]
    if not pairs:
        return '-'
    lo, hi = min(x for _, x in pairs), max(x for _, x in pairs)
    if lo >= 1:
        return f'faster at every resolution ({lo:.2f}-{hi:.2f}x)'
    if hi < 1:
        return f'slower at every resolution ({lo:.2f}-{hi:.2f}x)'
    for i, (r, x) in enumerate(pairs):
        if all(y >= 1 for _, y in pairs[i:]):
            return f'faster from {r} px ({pairs[-1][1]:.2f}x at {pairs[-1][0]})'
    return 'mixed: ' + ', '.join(f'{x:.2f}x at {r}' for r, x in pairs)


def zoo_names(rows):
    """Model columns other than ours / timm, in first-seen order, uni routes before the others."""
    seen = []
    for r in rows:
        if r['model'] not in MODELS and r['model'] not in seen:
            seen.append(r['model'])
    return [n for n in seen if '@' not in n] + [n for n in seen if '@' in n]


def zoo_tables(rows, mode, kind):
    """Markdown: img/s with the ratio to timm SDPA of the same call per resolution, and peak memory, one row
    per model (uni routes) and one timm SDPA row per call (merged results: a ``call`` column)."""
    key = f'{kind}_img_s'
    ress = sorted({r['res'] for r in rows if r['mode'] == mode})
    batch = {r['res']: r['batch'] for r in rows if r['mode'] == mode}
    calls = sorted({r.get('call', 0) for r in rows if r['model'] == SDPA and r['mode'] == mode})
    # (model, call): None = each resolution's first row that has a result, in call order
    entries = [(n, None) for n in zoo_names(rows) if '@' not in n] + [(SDPA, c) for c in calls]
    if not any(r['mode'] == mode for r in rows if r['model'] in {n for n, _ in entries}):
        return []
    speed, memory = [], []
    for n, call in entries:
        cells, mems, pairs, used = {}, {}, [], []
        for res in ress:
            r = _first_with(rows, n, res, mode, key) if call is None else _lookup(rows, n, res, mode, call)
            if r is None:
                continue
            used.append(r.get('call', 0))
            sd = _lookup(rows, SDPA, res, mode, r.get('call', 0))
            x = common.ratio(r.get(key), (sd or {}).get(key)) if n != SDPA else None
            pairs.append((res, x))
            ips = r.get(key)
            cells[res] = '-' if ips is None else common.fmt(ips) + (f' ({x:.2f}x)' if x is not None else '')
            if ips is None and any(k.endswith('error') or k == 'skipped' for k in r):
                cells[res] = 'error' if any(k.endswith('error') for k in r) else 'skipped'
            mems[res] = r.get(f'{kind}_peak_GiB')
        label = dict(model=n, call=','.join(str(c) for c in dict.fromkeys(used)))
        speed.append(dict(label, verdict=vs_sdpa(pairs) if n != SDPA else '', **{f'r{k}': v for k, v in cells.items()}))
        memory.append(dict(label, **{f'r{k}': v for k, v in mems.items()}))
    first = [('model', 'model')] + ([('call', 'call')] if len({r.get('call', 0) for r in rows}) > 1 else [])
    cols = [(f'{res} ({batch[res]})', f'r{res}') for res in ress]
    return [f'## zoo: {kind}, {mode} (images/s; x = / timm SDPA in the same call)', '',
            common.md_table(speed, first + cols + [('vs timm SDPA', 'verdict')]), '',
            f'## zoo: {kind}, {mode}: peak memory (GiB)', '',
            common.md_table(memory, first + cols), '']


def route_costs(rows, mode, kind):
    """[dict(mixer, res, batch, uni, <route>, <route>_x)]: img/s of each route and the step-time factor against
    the uni route of the same call (uni img/s / route img/s: 2.0 = a step twice as long)."""
    key = f'{kind}_img_s'
    out = []
    routed = [r for r in rows if r['mode'] == mode and '@' in r['model']]
    for mixer in dict.fromkeys(split_name(r['model'])[0] for r in routed):
        for res in sorted({r['res'] for r in routed if split_name(r['model'])[0] == mixer}):
            mine = [r for r in routed if split_name(r['model'])[0] == mixer and r['res'] == res]
            call = mine[0].get('call', 0)
            uni = _lookup(rows, mixer, res, mode, call)
            row = dict(mixer=mixer, res=res, batch=mine[0]['batch'], uni=(uni or {}).get(key))
            for r in mine:
                if r.get('call', 0) != call:
                    continue
                route = split_name(r['model'])[1]
                row[route] = r.get(key)
                row[f'{route}_x'] = common.ratio(row['uni'], r.get(key))
            out.append(row)
    return out


def route_tables(rows, mode, kinds):
    md = []
    routes = list(dict.fromkeys(split_name(r['model'])[1] for r in rows if '@' in r['model']))
    for kind in kinds:
        table = route_costs(rows, mode, kind)
        if not any(any(r.get(route) is not None for route in routes) for r in table):
            continue
        cols = [('mixer', 'mixer'), ('res (batch)', lambda r: f"{r['res']} ({r['batch']})"), ('uni img/s', 'uni')]
        for route in routes:
            cols += [(f'{route} img/s', route), (f'{route}: step time x uni', f'{route}_x')]
        md += [f'## scan routes: {kind}, {mode} (each against uni in the same call)', '', common.md_table(table, cols),
               '']
    return md


def profile_table(profile):
    """Markdown: per profiled resolution and model, the step's kernel time and its longest kernels."""
    md = []
    for tag, per in (profile or {}).items():
        res, _, mode = str(tag).partition('_')
        table = []
        for name, s in per.items():
            ks = s.get('kernels') or []
            table.append(dict(model=name, ms=s.get('kernel_ms'), top='; '.join(
                f"`{k['name'][:60]}` {k['share']:.0%}" for k in ks[:3] if k.get('share') is not None) or '-'))
        md += [f'## which kernels a train step spends its time in ({res} px, {mode or "eager"}; profile_{tag}.md has '
               'the tables)', '',
               common.md_table(table, [('model', 'model'), ('kernel ms / step', 'ms'),
                                       ('longest kernels (share of the kernel time)', 'top')]), '']
    return md


def host_table(rows):
    """Markdown: the host-probe step (``--host-probe``) of each model and mode beside its timed steps."""
    probes = [r for r in rows if r.get('probe') == 'host' and r.get('train_ms') is not None]
    if not probes:
        return []
    table = []
    for p in probes:
        steps = [r for r in _rows_of(rows, p['mode'], p.get('call', 0))
                 if r['model'] == p['model'] and r.get('train_ms') is not None]
        table.append(dict(model=p['model'], mode=p['mode'], host=p['train_ms'], steps=', '.join(
            f"{r['train_ms']:.1f} at {r['res']}" for r in steps) or '-'))
    return [f"## host time of a train step ({probes[0]['res']} px, batch 1: almost no GPU work)", '',
            'Where a resolution\'s step takes about the host time, that step is host-bound (Python, autograd and '
            'launches set its time, not the kernels).', '',
            common.md_table(table, [('model', 'model'), ('mode', 'mode'), ('host ms / step', 'host'),
                                    ('ms / step at the timed resolutions', 'steps')]), '']


def report(res, out, plot=True):
    """models.md (and models.png with ``plot``) from the results so far (one call's, or merged ones)."""
    rows = res['rows']
    calls = res.get('calls') or [dict(env=res['env'], args=res['args'])]
    args = res['args']
    md = [f"# Model benchmark ({res['env'].get('device')})", '']
    if any(r['model'] in MODELS for r in rows):
        md += [f"backbone of ours: `{res.get('backbone')}`; timm `{TIMM_NAME}` "
               f"{res['env'].get('timm', '(not installed)')} with {res.get('timm_kwargs')}.", '']
    for i, c in enumerate(calls):
        ca = c['args']
        md.append(f"- {'call ' + str(i) + ': ' if len(calls) > 1 else ''}{c['env'].get('device')}, torch "
                  f"{c['env'].get('torch')}, commit {str(c['env'].get('commit'))[:12]}; "
                  f"{'bf16 autocast' if ca.get('amp') else 'fp32'}, AdamW; img/s from the median of 3 runs of "
                  f"{max(1, ca.get('steps', 3) // 3)} back-to-back steps" +
                  (f"; mixers {ca.get('mixers')} routes {ca.get('routes')} res {ca.get('res')}" if ca.get('mixers')
                   else ''))
    for note in res.get('notes', []):
        md.append(f'- {note}')
    md.append('')
    legacy = [r for r in rows if r['model'] in (('ours', 'timm_op') if zoo_names(rows) else MODELS)]
    for mode in args['modes']:
        for kind in args['kinds']:
            table = []
            for r0 in [r for r in _rows_of(legacy, mode) if r['model'] == 'ours'] or _rows_of(legacy, mode)[:1]:
                call = r0.get('call', 0)
                by = {m: _lookup(rows, m, r0['res'], mode, call) or {} for m in MODELS}
                g = {m: by[m].get(f'{kind}_img_s') for m in MODELS}
                mem = {m: by[m].get(f'{kind}_peak_GiB') for m in MODELS}
                table.append(dict(res=f"{r0['res']} ({r0['batch']})", **{f'{m}_ips': g[m] for m in MODELS},
                                  **{f'{m}_mem': mem[m] for m in MODELS},
                                  r_op=common.ratio(g['ours'], g['timm_op']),
                                  r_sdpa=common.ratio(g['ours'], g['timm_sdpa']),
                                  r_op_sdpa=common.ratio(g['timm_op'], g['timm_sdpa'])))
            if table:
                md += [f'## {kind}, {mode} (images/s; peak GiB)', '', common.md_table(table, [
                    ('res (batch)', 'res'), ('ours', 'ours_ips'), ('timm + our op', 'timm_op_ips'),
                    ('timm SDPA', 'timm_sdpa_ips'), ('ours / timm+op', 'r_op'), ('ours / timm SDPA', 'r_sdpa'),
                    ('timm+op / timm SDPA', 'r_op_sdpa'), ('peak ours', 'ours_mem'), ('peak timm+op', 'timm_op_mem'),
                    ('peak timm SDPA', 'timm_sdpa_mem')]), '']
            if zoo_names(rows):
                md += zoo_tables(rows, mode, kind)
        md += route_tables(rows, mode, args['kinds'])
    md += profile_table(res.get('profile'))
    md += host_table(rows)
    errs = [f"- {r['model']} {r['res']} {r['mode']}{' (call %d)' % r['call'] if 'call' in r else ''} {k}: {v}"
            for r in rows for k, v in r.items() if k.endswith('error') or k == 'skipped']
    if errs:
        md += ['## failed or skipped cases', ''] + errs + ['']
    noisy = [f"- {r['model']} {r['res']} {r['mode']} {k[:-7]}: runs differ by {r[k]:.0%} of the median"
             for r in rows for k in ('train_spread', 'infer_spread') if (r.get(k) or 0) > NOISY_SPREAD]
    if noisy:  # a ratio between two such cases is only as good as this
        md += [f'## cases whose three timed runs differ by more than {NOISY_SPREAD:.0%}', ''] + noisy + ['']
    broken = [f"- {r['model']} {r['res']}: {r['graphs']} graphs, {r['graph_breaks']} graph breaks"
              for r in rows if r.get('graph_breaks')]
    if broken:  # each break adds a graph and its host cost (guards, autograd functions) to every step
        md += ['## compiled cases with graph breaks', ''] + broken + ['']
    common.write_text(osp.join(out, 'models.md'), '\n'.join(md))
    profiled = [r for r in rows if r.get('host_profile')]
    if profiled:
        common.write_text(osp.join(out, 'host_profile.md'), '\n'.join(
            f"## {r['model']}, {r['mode']}: 5 train steps at {r['res']} px, batch 1\n\n```\n{r['host_profile']}\n```\n"
            for r in profiled))
    if plot:
        plot_report(res, out)


STYLES = ('-o', '-s', '-^', '-D', '--o', '--s', '--^', '--D', ':o', ':s', ':^', ':D')


def plot_report(res, out):
    rows, args = res['rows'], res['args']
    zoo = zoo_names(rows)
    panels = []
    if zoo:  # one line per model (uni routes), eager first mode
        mode = args['modes'][0]
        names = [n for n in zoo if '@' not in n] + [SDPA]
        for kind in args['kinds']:
            key = f'{kind}_img_s'
            series, ratios = {}, {}
            for i, n in enumerate(names):
                style = 'k-o' if n == SDPA else STYLES[i % len(STYLES)]
                pts = [(res_, _first_with(rows, n, res_, mode, key)) for res_ in sorted({r['res'] for r in rows})]
                pts = [(x, r) for x, r in pts if r is not None]
                series[n] = ([x for x, _ in pts], [r.get(key) for _, r in pts], style)
                if n != SDPA:
                    ratios[n] = ([x for x, _ in pts], [common.ratio(r.get(key), (_lookup(
                        rows, SDPA, x, mode, r.get('call', 0)) or {}).get(key)) for x, r in pts], style)
            panels.append((f'{kind} images/s ({mode})', 'resolution (px; batch falls with it)', 'images/s', series))
            panels.append((f'{kind}: / timm SDPA (same call)', 'resolution (px)', 'ratio', ratios))
        routes = list(dict.fromkeys(split_name(r['model'])[1] for r in rows if '@' in r['model']))
        for route in routes:
            table = route_costs(rows, mode, 'train' if 'train' in args['kinds'] else args['kinds'][0])
            mixers = list(dict.fromkeys(t['mixer'] for t in table))
            series = {m: ([t['res'] for t in table if t['mixer'] == m],
                          [t.get(f'{route}_x') for t in table if t['mixer'] == m], STYLES[i % len(STYLES)])
                      for i, m in enumerate(mixers)}
            panels.append((f'{route}: train step time x uni', 'resolution (px)', 'x uni', series))
        title = f"{res['env'].get('device')}: the zoo's Small models vs timm {TIMM_NAME} (SDPA)"
    else:
        for kind in args['kinds']:
            series = {}
            for m in MODELS:
                for mode in args['modes']:
                    rs = sorted([r for r in rows if r['model'] == m and r['mode'] == mode], key=lambda r: r['res'])
                    if any(f'{kind}_img_s' in r for r in rs):
                        series[f'{m} {mode}'] = ([r['res'] for r in rs], [r.get(f'{kind}_img_s') for r in rs],
                                                 ('-o' if mode == 'eager' else '--s'))
            panels.append((f'{kind} images/s', 'resolution (px; batch falls with it)', 'images/s', series))
        title = f"{res['env'].get('device')}: {res.get('backbone')} vs timm {TIMM_NAME}"
    common.plot_panels(osp.join(out, 'models.png'), panels, ncols=2, title=title)


def merge_results(paths):
    """One results dict from several calls' results.json (a folder stands for its results.json): rows tagged
    with their call's index, the union of modes and kinds, every call's environment and arguments kept."""
    merged = dict(rows=[], calls=[], notes=[], profile={})
    for i, path in enumerate(paths):
        path = osp.join(path, 'results.json') if osp.isdir(path) else path
        with open(path) as f:
            r = json.load(f)
        if i == 0:
            merged.update(env=r['env'], backbone=r.get('backbone'), timm_kwargs=r.get('timm_kwargs'),
                          args=dict(r['args'], modes=[], kinds=[]))
        for key in ('modes', 'kinds'):
            merged['args'][key] += [m for m in r['args'][key] if m not in merged['args'][key]]
        merged['calls'].append(dict(path=path, env=r['env'], args=r['args']))
        merged['rows'] += [dict(row, call=i) for row in r['rows']]
        merged['notes'] += [f'call {i}: {n}' for n in r.get('notes', [])]
        for res_, per in (r.get('profile') or {}).items():
            dst = merged['profile'].setdefault(str(res_), {})
            for name, s in per.items():
                dst[name if name not in dst else f'{name} (call {i})'] = s
    return merged


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config', nargs='?', default=DEFAULT_CONFIG, help='config whose model.backbone is timed')
    p.add_argument('--backbone', help="backbone dict literal instead of a config, e.g. \"{'type': "
                                      "'vla_mm.LinearViT', 'arch': 'small', 'mixer': {'type': 'linear_attn'}}\"")
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    p.add_argument('--out', required=True)
    p.add_argument('--res', default='224,512,1024,2048,4096')
    p.add_argument('--batch', default='256,64,16,4,1', help='one batch per resolution')
    p.add_argument('--models', default=None,
                   help="of ours,timm_op,timm_sdpa,ours_fused_ln,ours_ln,ours_bias_grad (+cached: with the launch "
                        "cache) ('none' for none; default: the first three, or timm_sdpa alone with --mixers)")
    p.add_argument('--mixers', default='', help="zoo mixers whose Small models are timed, comma-separated, or 'all'")
    p.add_argument('--routes', default='uni', help='scan routes of the directional --mixers, e.g. uni,bi,cross')
    p.add_argument('--route-res', default='', help='resolutions of the route variants (default: every --res)')
    p.add_argument('--modes', default='eager,compile')
    p.add_argument('--kinds', default='train,infer')
    p.add_argument('--compile-backend', default='inductor')
    p.add_argument('--compile-mode', default=None, help="torch.compile mode, e.g. 'max-autotune-no-cudagraphs'")
    p.add_argument('--fullgraph', action='store_true',
                   help='torch.compile(fullgraph=True): a graph break fails the case instead of slowing it')
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--warmup', type=int, default=3, help='warm-up steps, the first one included')
    p.add_argument('--drop-path', dest='drop_path', type=float, default=0.0,
                   help='drop_path_rate of every model (default 0: the step times the same work)')
    p.add_argument('--no-amp', dest='amp', action='store_false')
    p.add_argument('--cudnn-benchmark', action=argparse.BooleanOptionalAction, default=True,
                   help="cuDNN's autotuner (torch.backends.cudnn.benchmark; default on, as in timm's benchmark)")
    p.add_argument('--profile', default='', help='resolution(s) whose train steps are profiled')
    p.add_argument('--profile-modes', dest='profile_modes', default='eager',
                   help="modes whose train steps --profile profiles, of --modes (e.g. 'eager,compile')")
    p.add_argument('--profile-rows', dest='profile_rows', type=int, default=20)
    p.add_argument('--host-profile', dest='host_profile', action='store_true',
                   help='with --host-probe: cProfile of 5 host-probe train steps per model and mode (host_profile.md)')
    p.add_argument('--host-probe', dest='host_probe', type=int, default=0, metavar='RES',
                   help='also time a train step of each model at RES px, batch 1 (e.g. 32): almost no GPU work, so '
                        'its time is the host\'s (Python, autograd, launches); 0: off')
    p.add_argument('--launch', type=json.loads, default=None,
                   help='launch options of our kernels for the whole run, as JSON: kernel_options(launch=...), e.g. '
                        '\'{"norm_bwd": {"tile": 1, "num_warps": 4}}\' (names in docs/ops.md)')
    p.add_argument('--warm', dest='warm', action='store_true', default=None,
                   help="compile Triton's kernels in parallel processes first (default: on CUDA)")
    p.add_argument('--no-warm', dest='warm', action='store_false')
    p.add_argument('--warm-jobs', type=int, default=0, help='warm-up processes at once (default: CPUs - 2)')
    p.add_argument('--warm-seconds', type=float, default=240, help='the longest the warm-up may take')
    p.add_argument('--warm-one', help=argparse.SUPPRESS)
    p.add_argument('--merge', nargs='+', metavar='RESULTS_JSON',
                   help='no run: the report of these results.json files (or folders) together, written to --out')
    p.add_argument('--deadline', type=float, default=510, help='seconds for the whole call')
    p.add_argument('--smoke', action='store_true', help='CPU, tiny models and images (CI); timm skipped if missing')
    if '--smoke' in (sys.argv[1:] if argv is None else argv):  # tiny defaults; explicit options still win
        p.set_defaults(res='32,64', batch='2,1', steps=2, warmup=1, amp=False, compile_backend='eager')
    a = p.parse_args(argv)
    if a.merge:
        return a
    a.timm_kwargs = {}
    if a.smoke:
        a.timm_kwargs = dict(embed_dim=SMOKE_ARCH['embed_dims'], depth=SMOKE_ARCH['num_layers'],
                             num_heads=SMOKE_ARCH['num_heads'])
        a.cfg_options = {'model.backbone.arch': dict(_delete_=True, **SMOKE_ARCH), **(a.cfg_options or {})}
        if a.backbone:
            a.backbone = repr({**ast.literal_eval(a.backbone), 'arch': dict(SMOKE_ARCH)})
    a.res = [int(r) for r in str(a.res).split(',')]
    a.batch = [int(b) for b in str(a.batch).split(',')]
    if len(a.batch) == 1:
        a.batch = a.batch * len(a.res)
    if len(a.batch) != len(a.res):
        p.error(f'--batch needs one value or one per resolution ({len(a.res)}), got {len(a.batch)}')
    a.zoo = zoo_backbones() if a.mixers else {}
    a.mixers = [m for m in a.mixers.split(',') if m]
    if a.mixers == ['all']:
        a.mixers = list(a.zoo)
    unknown = [m for m in a.mixers if m not in a.zoo]
    if unknown:
        p.error(f'--mixers: no family base configs/_base_/models/isotropic/<mixer>-s.py for {unknown}; '
                f'known: {sorted(a.zoo)}')
    a.routes = [r for r in a.routes.split(',') if r]
    a.route_res = [int(r) for r in a.route_res.split(',') if r] or None
    if a.models is None:
        a.models = SDPA if a.mixers else ','.join(MODELS)
    a.models = [m for m in a.models.split(',') if m and m != 'none']
    a.modes, a.kinds = a.modes.split(','), a.kinds.split(',')
    a.profile = [int(r) for r in str(a.profile).split(',') if r]
    a.profile_modes = [m for m in str(a.profile_modes).split(',') if m]
    return a


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    if a.merge:
        os.makedirs(a.out, exist_ok=True)
        res = merge_results(a.merge)
        common.write_json(osp.join(a.out, 'results.json'), res)
        report(res, a.out)
        print(open(osp.join(a.out, 'models.md')).read())
        return 0
    import vla_mm  # noqa: F401  (registers the vla_mm scope)
    from vla_mm.ops.common import kernel_options
    with kernel_options(launch=a.launch or {}):
        return run(a, argv)


def run(a, argv):
    """The timed cases of one call (or one warm-up child) under ``--launch``."""
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    if a.warm_one:  # a warm-up child: compile, report on stdout, write nothing under --out
        device = torch.device('cuda' if torch.cuda.is_available() and not a.smoke else 'cpu')
        a.amp = a.amp and device.type == 'cuda'
        bcfg = backbone_cfg(a)
        a.op_kwargs = op_kwargs_of(bcfg)
        warm_one(a.warm_one, a, device, bcfg, common.Log())
        return 0
    log, deadline, device = common.start(a.out, a.deadline, cpu=a.smoke)
    a.amp = a.amp and device.type == 'cuda'
    a.env = common.describe_env()
    bcfg = backbone_cfg(a)
    a.op_kwargs = op_kwargs_of(bcfg)
    res = dict(env=a.env, args={k: v for k, v in vars(a).items() if k not in ('env', 'zoo')}, backbone=bcfg,
               timm_kwargs=dict(TIMM_KWARGS, **a.timm_kwargs), rows=[], notes=[])
    if 'ours' in a.models or 'timm_op' in a.models:
        res['notes'].append(f"ours: the backbone above with img_size = the resolution, drop_path_rate={a.drop_path} "
                            "and out_type='avg_featmap' where it takes them, + a linear head; timm_op: "
                            f"linear_attn(**{a.op_kwargs}) in timm's attention")
    if a.mixers:
        res['notes'].append('<mixer>: the backbone of configs/_base_/models/isotropic/<mixer>-s.py (img_size = the '
                            f'resolution, drop_path_rate={a.drop_path}, mean pooling) + a linear head; <mixer>@<route>:'
                            ' the same with scan=dict(type=route)')
    log(a.env)
    log(f'backbone {bcfg}')
    models = list(a.models)
    if any(n.startswith('timm') for n in models):
        try:
            import timm  # noqa: F401
            from timm.layers import use_fused_attn
            res['notes'].append(f'timm attention fused (SDPA): {use_fused_attn()}')
        except ImportError:
            models = [n for n in models if not n.startswith('timm')]
            res['notes'].append('timm is not installed: the timm models were skipped')
            log(res['notes'][-1])
    if 'ours' in models and bcfg.get('mixer', {}).get('type', 'linear_attn') != 'linear_attn' and 'timm_op' in models:
        res['notes'].append('the backbone mixer is not linear_attn: timm_op still runs linear_attn')
    names = case_names(a, models, res['notes'])
    out_json = osp.join(a.out, 'results.json')
    if (device.type == 'cuda') if a.warm is None else a.warm:
        t0 = time.time()
        res['warm'] = warm_all(names, a, argv, log, deadline)
        res['notes'].append(f'Triton warm-up: {len(res["warm"])} processes, {time.time() - t0:.0f} s before the '
                            'timed cases (first-call times below are cache loads)')
    def record(row):
        """A finished case: into the results (written at once) and the log."""
        res['rows'].append(row)
        log(' '.join(f'{k}={common.fmt(v)}' for k, v in row.items()))
        common.write_json(out_json, res)

    for mode in a.modes:
        need = 20 if mode == 'eager' else 120
        for r, b in zip(a.res, a.batch):
            for name in (n for n in names if timed_at(n, r, a)):
                if deadline.expired(need):
                    row = dict(model=name, res=r, batch=b, mode=mode, skipped='deadline')
                else:
                    row = run_case(name, r, b, mode, a, device, bcfg)
                record(row)
                common.guarded(log, 'report', report, res, a.out, plot=False)  # a killed call keeps its table
        if a.host_probe:
            for name in (n for n in names if '@' not in n):
                if deadline.expired(need):
                    continue
                record(dict(run_case(name, a.host_probe, 1, mode, a, device, bcfg, kinds=('train',),
                                     host_profile=a.host_profile), probe='host'))
        if mode in a.profile_modes:
            for pr in a.profile:
                if deadline.expired(60):
                    res['notes'].append(f'profile at {pr} ({mode}) skipped (deadline)')
                    continue
                b = a.batch[a.res.index(pr)] if pr in a.res else 1
                res.setdefault('profile', {})[profile_tag(pr, mode)] = profile_models(
                    pr, b, a, device, bcfg, [n for n in names if '@' not in n], a.out, log, mode)
                common.write_json(out_json, res)
    common.write_json(out_json, res)
    common.guarded(log, 'report', report, res, a.out)
    failed = [r for r in res['rows'] if any(k.endswith('error') for k in r)]
    log(f'done: {len(res["rows"])} cases, {len(failed)} with a failure; files: {sorted(os.listdir(a.out))}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
