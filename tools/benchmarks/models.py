"""Model benchmark: train and inference throughput and peak memory of a registered backbone beside timm's ViT-S,
eager and under ``torch.compile``, at several resolutions, in one process.

    source tools/device_prelude.sh && python3 tools/benchmarks/models.py --out $OUT [CONFIG | --backbone DICT]
        [--res 224,512,1024,2048,4096] [--batch 256,64,16,4,1] [--modes eager,compile] [--profile 1024]
        [--models ours,timm_op,timm_sdpa] [--deadline 510]
    python tools/benchmarks/models.py --smoke --out /tmp/models_smoke     # CPU, tiny sizes (CI)

Models, each an image classifier (backbone, mean pool over tokens, linear head, 1000 classes):
  ours       the config's backbone (default ``configs/linear_attn/linear-attn-s_8xb128_in1k.py``: the isotropic
             ViT-S with the ``linear_attn`` mixer), built through the MMEngine registry with ``img_size`` = the
             resolution, ``drop_path_rate`` 0 and mean pooling (``out_type='avg_featmap'``) where it takes them;
  timm_op    timm's ``vit_small_patch16_224`` (no class token, final norm on every token, average pool: the same
             tokens and layers as ours) with our ``vla_mm.ops.linear_attn.linear_attn`` in each block's attention
             (timm's qkv / proj kept);
  timm_sdpa  the same timm ViT-S with its own attention (``F.scaled_dot_product_attention``).
Train step: forward under bf16 autocast, cross-entropy, backward, AdamW step (fp32 weights). Inference:
``torch.inference_mode`` + bf16 autocast. After ``--warmup`` steps, three runs of ``--steps`` / 3 back-to-back
steps (CUDA events around each run), images/s = batch / (median run time / steps per run); peak memory = ``torch.cuda.max_memory_allocated`` over the timed
steps. Every case (model x resolution x eager/compile x train/infer) catches and reports its own failure (an
out-of-memory, a compile error); the eager cases all run before any compiled one, and a case that would pass
``--deadline`` is skipped and recorded. ``--profile RES``: torch.profiler of two train steps of each model at RES
(top kernels by CUDA time, ``aten::contiguous`` / copy counts). Writes log.txt, results.json (after every case),
models.md, models.png and profile_<RES>.md under --out.
"""
import argparse
import ast
import copy
import inspect
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402

DEFAULT_CONFIG = osp.join(common.ROOT, 'configs', 'linear_attn', 'linear-attn-s_8xb128_in1k.py')
TIMM_NAME = 'vit_small_patch16_224'
MODELS = ('ours', 'timm_op', 'timm_sdpa')
# ours has no class token and takes the final norm on every token before the mean: timm the same way
TIMM_KWARGS = dict(class_token=False, global_pool='avg', fc_norm=False)


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


def build_ours(bcfg, res, a, device):
    """The registered backbone (MMEngine registry, any scope) at resolution ``res`` plus a linear head."""
    import vla_mm  # noqa: F401  (registers the vla_mm scope)
    from mmengine.registry import MODELS as REG
    cfg = copy.deepcopy(bcfg)
    cls = REG.get(cfg['type'])
    if cls is None:
        raise KeyError(f"backbone type {cfg['type']!r} is not registered")
    params = inspect.signature(cls).parameters
    for key, value in (('img_size', res), ('drop_path_rate', a.drop_path), ('out_type', 'avg_featmap')):
        if key in params and (key != 'drop_path_rate' or value is not None):
            cfg[key] = value
    backbone = REG.build(cfg).to(device)  # constructor initialisation: speed does not depend on init_weights()
    with torch.no_grad():
        dim = Classifier.pool(backbone(torch.zeros(1, cfg.get('in_channels', 3), res, res, device=device))).shape[-1]
    return Classifier(backbone, dim).to(device)


def build_timm(res, a, device, with_op):
    import timm
    kw = dict(pretrained=False, num_classes=1000, img_size=res, drop_path_rate=a.drop_path or 0.0, **TIMM_KWARGS,
              **a.timm_kwargs)
    model = timm.create_model(TIMM_NAME, **kw)
    if with_op:
        for blk in model.blocks:
            blk.attn = TimmLinearAttention(blk.attn, **a.op_kwargs)
    return model.to(device)


def build(name, res, a, device, bcfg):
    if name == 'ours':
        return build_ours(bcfg, res, a, device)
    return build_timm(res, a, device, with_op=name == 'timm_op')


def op_kwargs_of(bcfg):
    """Our mixer's op options (feature map, normalisation) for the timm+op model, so both run the same op."""
    mixer = bcfg.get('mixer') or {}
    return {k: mixer[k] for k in ('feature_map', 'normalize', 'focus_power') if k in mixer}


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


def measure(fn, batch, a, device):
    """(images/s, ms per step, first-call s, peak GiB) of ``fn``: after the warm-up, three runs of steps / 3
    back-to-back calls (no synchronisation inside a run, so the host may run ahead as in training), the median
    run's time per call."""
    t = time.time()
    fn()
    common.synchronize(device)
    first = time.time() - t
    for _ in range(max(0, a.warmup - 1)):
        fn()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    per_run = max(1, a.steps // 3)

    def run():
        for _ in range(per_run):
            fn()
    times = common.time_calls(run, n=3, warmup=0, device=device)
    ms = sorted(times)[1] / per_run
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == 'cuda' else None
    return batch / (ms * 1e-3), ms, first, peak


def run_case(name, res, batch, mode, a, device, bcfg):
    """One model at one resolution in one mode: train and inference figures (or the error of each)."""
    row = dict(model=name, res=res, batch=batch, mode=mode)
    model = None
    try:
        model = build(name, res, a, device, bcfg)
        row['params_M'] = sum(p.numel() for p in model.parameters()) / 1e6
        run = torch.compile(model, backend=a.compile_backend, mode=a.compile_mode) if mode == 'compile' else model
        for kind, make in (('train', train_step_fn), ('infer', infer_fn)):
            if kind not in a.kinds:
                continue
            model.train(kind == 'train')
            try:
                ips, ms, first, peak = measure(make(run, batch, res, a, device), batch, a, device)
                row.update({f'{kind}_img_s': ips, f'{kind}_ms': ms, f'{kind}_first_s': first,
                            f'{kind}_peak_GiB': peak})
            except Exception as e:  # noqa: BLE001  (an OOM or a compile failure of this case only)
                row[f'{kind}_error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    except Exception as e:  # noqa: BLE001
        row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
    del model
    if mode == 'compile':
        torch._dynamo.reset()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return row


def profile_models(res, batch, a, device, bcfg, names, out, log):
    """Two profiled train steps of each model at ``res`` (eager): top kernels, contiguous / copy counts."""
    md = [f'# Train-step profile at {res} px, batch {batch} (2 steps, eager, {a.env.get("device")})', '']
    summary = {}
    for name in names:
        def one():
            model = build(name, res, a, device, bcfg).train()
            table, rows = common.profile(train_step_fn(model, batch, res, a, device), iters=2, row_limit=a.profile_rows,
                                         device=device)
            copies = {k: dict(count=sum(r['count'] for r in rows if r['name'] == k),
                              ms=sum(r['ms_per_iter'] for r in rows if r['name'] == k))
                      for k in ('aten::contiguous', 'aten::copy_', 'aten::clone')}
            kern = [r for r in rows if not r['name'].startswith(('aten::', 'autograd::', 'Optimizer', 'cuda'))
                    and 'copy' in r['name'].lower()]
            copies['copy kernels'] = dict(count=sum(r['count'] for r in kern), ms=sum(r['ms_per_iter'] for r in kern))
            summary[name] = dict(copies=copies, top=rows[:a.profile_rows])
            md.extend([f'## {name}', '', 'per train step: ' + ', '.join(
                f"{k} x{v['count']:.0f} ({v['ms']:.2f} ms)" for k, v in copies.items()), '', '```', table, '```', ''])
        common.guarded(log, f'profile {name} {res}', one)
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    common.write_text(osp.join(out, f'profile_{res}.md'), '\n'.join(md))
    return summary


# ----------------------------------------------------------------------------------------------- report
def report(res, out, plot=True):
    """models.md (and models.png with ``plot``) from the results so far."""
    rows = res['rows']
    md = [f"# Model benchmark ({res['env'].get('device')})", '',
          f"backbone: `{res['backbone']}`; timm `{TIMM_NAME}` {res['env'].get('timm', '(not installed)')} with "
          f"{res['timm_kwargs']}; torch {res['env'].get('torch')}, commit {str(res['env'].get('commit'))[:12]}. "
          f"{'bf16 autocast, ' if res['args']['amp'] else 'fp32, '}AdamW; img/s from the median of 3 runs of "
          f"{max(1, res['args']['steps'] // 3)} back-to-back steps.", '']
    for note in res.get('notes', []):
        md.append(f'- {note}')
    md.append('')
    for mode in res['args']['modes']:
        for kind in res['args']['kinds']:
            table = []
            for r0 in [r for r in rows if r['mode'] == mode and r['model'] == 'ours'] or \
                    [r for r in rows if r['mode'] == mode][:1]:
                by = {r['model']: r for r in rows if r['mode'] == mode and r['res'] == r0['res']}
                g = {m: by.get(m, {}).get(f'{kind}_img_s') for m in MODELS}
                mem = {m: by.get(m, {}).get(f'{kind}_peak_GiB') for m in MODELS}
                table.append(dict(res=f"{r0['res']} ({r0['batch']})", **{f'{m}_ips': g[m] for m in MODELS},
                                  **{f'{m}_mem': mem[m] for m in MODELS},
                                  r_op=common.ratio(g['ours'], g['timm_op']),
                                  r_sdpa=common.ratio(g['ours'], g['timm_sdpa']),
                                  r_op_sdpa=common.ratio(g['timm_op'], g['timm_sdpa'])))
            md += [f'## {kind}, {mode} (images/s; peak GiB)', '', common.md_table(table, [
                ('res (batch)', 'res'), ('ours', 'ours_ips'), ('timm + our op', 'timm_op_ips'),
                ('timm SDPA', 'timm_sdpa_ips'), ('ours / timm+op', 'r_op'), ('ours / timm SDPA', 'r_sdpa'),
                ('timm+op / timm SDPA', 'r_op_sdpa'), ('peak ours', 'ours_mem'), ('peak timm+op', 'timm_op_mem'),
                ('peak timm SDPA', 'timm_sdpa_mem')]), '']
    errs = [f"- {r['model']} {r['res']} {r['mode']} {k}: {v}" for r in rows for k, v in r.items()
            if k.endswith('error') or k == 'skipped']
    if errs:
        md += ['## failed or skipped cases', ''] + errs + ['']
    common.write_text(osp.join(out, 'models.md'), '\n'.join(md))
    if not plot:
        return
    panels = []
    for kind in res['args']['kinds']:
        series = {}
        for m in MODELS:
            for mode in res['args']['modes']:
                rs = sorted([r for r in rows if r['model'] == m and r['mode'] == mode], key=lambda r: r['res'])
                if any(f'{kind}_img_s' in r for r in rs):
                    series[f'{m} {mode}'] = ([r['res'] for r in rs], [r.get(f'{kind}_img_s') for r in rs],
                                             ('-o' if mode == 'eager' else '--s'))
        panels.append((f'{kind} images/s', 'resolution (px; batch falls with it)', 'images/s', series))
    common.plot_panels(osp.join(out, 'models.png'), panels, ncols=2,
                       title=f"{res['env'].get('device')}: {res['backbone']} vs timm {TIMM_NAME}")


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
    p.add_argument('--models', default=','.join(MODELS))
    p.add_argument('--modes', default='eager,compile')
    p.add_argument('--kinds', default='train,infer')
    p.add_argument('--compile-backend', default='inductor')
    p.add_argument('--compile-mode', default=None, help="torch.compile mode, e.g. 'max-autotune-no-cudagraphs'")
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--warmup', type=int, default=3, help='warm-up steps, the first one included')
    p.add_argument('--drop-path', dest='drop_path', type=float, default=0.0,
                   help='drop_path_rate of every model (default 0: the step times the same work)')
    p.add_argument('--no-amp', dest='amp', action='store_false')
    p.add_argument('--profile', default='', help='resolution(s) whose train steps are profiled (eager)')
    p.add_argument('--profile-rows', dest='profile_rows', type=int, default=20)
    p.add_argument('--deadline', type=float, default=510, help='seconds for the whole call')
    p.add_argument('--smoke', action='store_true', help='CPU, tiny models and images (CI); timm skipped if missing')
    if '--smoke' in (sys.argv[1:] if argv is None else argv):  # tiny defaults; explicit options still win
        p.set_defaults(res='32,64', batch='2,1', steps=2, warmup=1, amp=False, compile_backend='eager')
    a = p.parse_args(argv)
    a.timm_kwargs = {}
    if a.smoke:
        a.timm_kwargs = dict(embed_dim=32, depth=2, num_heads=2)
        tiny = dict(embed_dims=32, num_layers=2, num_heads=2)
        a.cfg_options = {'model.backbone.arch': dict(_delete_=True, **tiny), **(a.cfg_options or {})}
        if a.backbone:
            a.backbone = repr({**ast.literal_eval(a.backbone), 'arch': tiny})
    a.res = [int(r) for r in str(a.res).split(',')]
    a.batch = [int(b) for b in str(a.batch).split(',')]
    if len(a.batch) == 1:
        a.batch = a.batch * len(a.res)
    if len(a.batch) != len(a.res):
        p.error(f'--batch needs one value or one per resolution ({len(a.res)}), got {len(a.batch)}')
    a.models, a.modes, a.kinds = a.models.split(','), a.modes.split(','), a.kinds.split(',')
    a.profile = [int(r) for r in str(a.profile).split(',') if r]
    return a


def main(argv=None):
    a = parse_args(argv)
    log, deadline, device = common.start(a.out, a.deadline, cpu=a.smoke)
    a.amp = a.amp and device.type == 'cuda'
    a.env = common.describe_env()
    bcfg = backbone_cfg(a)
    a.op_kwargs = op_kwargs_of(bcfg)
    res = dict(env=a.env, args={k: v for k, v in vars(a).items() if k != 'env'}, backbone=bcfg,
               timm_kwargs=dict(TIMM_KWARGS, **a.timm_kwargs), rows=[],
               notes=[f"ours: the backbone above with img_size = the resolution, drop_path_rate={a.drop_path} and "
                      "out_type='avg_featmap' where it takes them, + a linear head; timm_op: "
                      f"linear_attn(**{a.op_kwargs}) in timm's attention"])
    log(a.env)
    log(f'backbone {bcfg}')
    names = list(a.models)
    if any(n.startswith('timm') for n in names):
        try:
            import timm  # noqa: F401
            from timm.layers import use_fused_attn
            res['notes'].append(f'timm attention fused (SDPA): {use_fused_attn()}')
        except ImportError:
            names = [n for n in names if not n.startswith('timm')]
            res['notes'].append('timm is not installed: the timm models were skipped')
            log(res['notes'][-1])
    if 'ours' in names and bcfg.get('mixer', {}).get('type', 'linear_attn') != 'linear_attn' and 'timm_op' in names:
        res['notes'].append('the backbone mixer is not linear_attn: timm_op still runs linear_attn')
    out_json = osp.join(a.out, 'results.json')
    for mode in a.modes:
        need = 20 if mode == 'eager' else 120
        for r, b in zip(a.res, a.batch):
            for name in names:
                if deadline.expired(need):
                    row = dict(model=name, res=r, batch=b, mode=mode, skipped='deadline')
                else:
                    row = run_case(name, r, b, mode, a, device, bcfg)
                res['rows'].append(row)
                log(' '.join(f'{k}={common.fmt(v)}' for k, v in row.items()))
                common.write_json(out_json, res)
                common.guarded(log, 'report', report, res, a.out, plot=False)  # a killed call keeps its table
        if mode == 'eager':
            for pr in a.profile:
                if deadline.expired(60):
                    res['notes'].append(f'profile at {pr} skipped (deadline)')
                    continue
                b = a.batch[a.res.index(pr)] if pr in a.res else 1
                res.setdefault('profile', {})[pr] = profile_models(pr, b, a, device, bcfg, names, a.out, log)
                common.write_json(out_json, res)
    common.write_json(out_json, res)
    common.guarded(log, 'report', report, res, a.out)
    failed = [r for r in res['rows'] if any(k.endswith('error') for k in r)]
    log(f'done: {len(res["rows"])} cases, {len(failed)} with a failure; files: {sorted(os.listdir(a.out))}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
