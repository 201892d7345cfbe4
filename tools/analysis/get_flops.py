#!/usr/bin/env python
"""Parameters and FLOPs of a config's model, on mmengine's complexity analysis, with vla_mm's ops counted.

    python tools/analysis/get_flops.py CONFIG [--shape H [W]] [--detail] [--depth 3] [--json FILE]
                                       [--cfg-options k=v ...] [--allow-uncounted]

FLOPs are multiply-adds of one image (mmengine's convention: a fused multiply-add is one flop; elementwise ops,
softmax and reductions count zero). The default input size comes from the config (``crop_size``, the test
pipeline's crop or resize, the train pipeline's crop, ``model.backbone.img_size``), else 224. Classifiers and
segmentors are counted through ``forward(mode='tensor')`` (backbone, neck and head); other models through
``extract_feat`` (backbone and neck), as printed.

mmengine traces the model with ``torch.jit``; a ``torch.library`` custom op shows in that trace as one node
named ``vla_mm::<op>`` (its arguments by schema name, constants readable), and an op called as a Python
``torch.autograd.Function`` shows as ``prim::PythonOp.<FunctionName>`` (tensor arguments in order, the rest as
scalar arguments); mmengine counts neither. :data:`OP_HANDLES` gives each a handle that computes the op's
multiply-adds from its argument shapes, registered with ``FlopAnalyzer.set_op_handle``; an op that is still
uncounted (a ``vla_mm::`` op or a ``PythonOp`` without a handle) fails the run (exit code 3) unless
``--allow-uncounted``. An op that runs its plain PyTorch reference (CPU, before the op is a custom op) is
counted through the reference's own einsums / matmuls.
"""
import argparse
import inspect
import json
import math
import os.path as osp
import sys

import torch

CHUNK = 64  # chunk length of the chunked causal kernels when the op does not say


# ----------------------------------------------------------------------------------------------- op arguments
class Shape(tuple):
    """The shape of a tensor argument (to tell it from a tuple constant)."""


def _value(v):
    """A jit Value as a handle needs it: the Shape of a tensor, the constant's value, or None."""
    if v.node().kind() == 'prim::Constant':
        return v.toIValue()
    if v.type().kind() == 'TensorType':
        return Shape(v.type().sizes()) if v.isCompleteTensor() else Shape()
    return None


def op_args(outputs):
    """Arguments of the traced op node that produced ``outputs``, by name: a custom op's schema names, or the
    parameters of an autograd Function's ``forward`` (after ``ctx``) matched to the node's tensor / scalar
    argument order (``cconv``)."""
    node = outputs[0].node()
    if node.kind() == 'prim::PythonOp':
        fn = getattr(node.pyobj(), '__self__', None)
        names = list(inspect.signature(fn.forward).parameters)[1:] if fn is not None else []
        tensors, scalars = iter(node.inputs()), iter(node.scalar_args())
        args = {}
        for i, c in enumerate(node.cconv()):
            name = names[i] if i < len(names) else f'arg{i}'
            args[name] = _value(next(tensors)) if c == 'd' else next(scalars)
        return args
    names = [a.name for a in torch._C.parse_schema(node.schema()).arguments]
    return {n: _value(v) for n, v in zip(names, node.inputs())}


def _get(args, *names, default=None):
    for n in names:
        if args.get(n) is not None:
            return args[n]
    return default


def _flag(args, name, default):
    """A bool option: the argument itself, or an option object's attribute / consts entry (PythonOp plans)."""
    v = args.get(name)
    if isinstance(v, bool):
        return v
    for obj in args.values():
        if isinstance(getattr(obj, name, None), bool):
            return getattr(obj, name)
        consts = getattr(obj, 'consts', None)
        if isinstance(consts, dict) and isinstance(consts.get(name.upper()), bool):
            return consts[name.upper()]
    return default


def _chunk(args, N):
    c = _get(args, 'chunk_size', 'chunk', 'BT', default=CHUNK)
    return max(1, min(int(c), N))


def _gated(shape):
    return isinstance(shape, Shape) and len(shape) > 0


# ----------------------------------------------------------------------------------------------- op formulas
def linear_attn_macs(B, N, H, K, V, normalize=True):
    """Non-causal linear attention per (batch, head): state sum_j phi(k_j) v_j^T N K V + output phi(q_i)^T S N K V
    + normaliser phi(q_i)^T z N K (z = sum_j phi(k_j) is additions only)."""
    return B * H * (2 * N * K * V + (N * K if normalize else 0))


def chunk_gla_macs(B, N, H, K, V, C=CHUNK, bonus=False):
    """Chunked causal gated linear attention, chunk C, per (batch, head): intra-chunk scores q k^T (causal half)
    N C K / 2 and their values N C V / 2, chunk states k^T v N K V, outputs from states q S N K V, RWKV6 bonus
    (q.(u*k)) v N (K + V)."""
    return B * H * (N * C * (K + V) // 2 + 2 * N * K * V + (N * (K + V) if bonus else 0))


def delta_rule_macs(B, N, H, K, V, C=CHUNK):
    """Chunked delta rule (WY form), chunk C, per (batch, head) and chunk: beta k k^T C^2 K / 2, triangular
    inverse C^3 / 6, W = T beta k and U = T beta v C^2 (K + V) / 2, intra-chunk q k^T and its values
    C^2 (K + V) / 2, W S, q S and the state update 3 C K V; summed over N / C chunks."""
    return B * H * (N * C * (K + V) + N * C * K // 2 + N * C * C // 6 + 3 * N * K * V)


def hgrn_macs(B, N, D, gated_input=True):
    """HGRN h_t = a_t h_{t-1} + (1 - a_t) x_t: one multiply-add per channel and token, one more for the input
    gate."""
    return B * N * D * (2 if gated_input else 1)


def gsa_macs(B, N, H, K, V, M, C=CHUNK):
    """Gated slot attention: two chunked gated passes, q k^T over M slots (K -> M), then softmax(.) s^T v
    (M -> V)."""
    return chunk_gla_macs(B, N, H, K, M, C) + chunk_gla_macs(B, N, H, M, V, C)


def sdpa_macs(q, k, v, causal):
    """Softmax attention q k^T N S K + weights x v N S V per (batch, head); causal: the lower half."""
    *batch, N, K = q
    S, V = k[-2], v[-1]
    full = math.prod(batch) * N * S * (K + V)
    return full // 2 if causal else full


# ----------------------------------------------------------------------------------------------- handles
def _qkv(args):
    q, v = _get(args, 'q', 'r', 'query'), _get(args, 'v', 'value')
    if not (_gated(q) and _gated(v)):
        tensors = [x for x in args.values() if _gated(x)]
        q, v = tensors[0], tensors[2]
    B, N, H, K = q
    return B, N, H, K, v[-1]


def linear_attn_handle(inputs, outputs):
    args = op_args(outputs)
    return linear_attn_macs(*_qkv(args), normalize=_flag(args, 'normalize', True))


def linear_attn_qkv_handle(inputs, outputs):
    args = op_args(outputs)
    B, N, _, H, D = _get(args, 'qkv')
    return linear_attn_macs(B, N, H, D, D, normalize=_flag(args, 'normalize', True))


def chunk_gla_handle(inputs, outputs):
    args = op_args(outputs)
    B, N, H, K, V = _qkv(args)
    return chunk_gla_macs(B, N, H, K, V, _chunk(args, N), bonus=_gated(args.get('u')))


def delta_rule_handle(inputs, outputs):
    args = op_args(outputs)
    B, N, H, K, V = _qkv(args)
    return delta_rule_macs(B, N, H, K, V, _chunk(args, N))


def hgrn_handle(inputs, outputs):
    args = op_args(outputs)
    x = _get(args, 'x', default=None)
    if not _gated(x):
        x = next(s for s in args.values() if _gated(s))
    B, N, D = x
    return hgrn_macs(B, N, D, _flag(args, 'gated_input', True))


def gsa_handle(inputs, outputs):
    args = op_args(outputs)
    B, N, H, K, V = _qkv(args)
    return gsa_macs(B, N, H, K, V, args['s'][-1], _chunk(args, N))


def layer_norm_handle(inputs, outputs):
    """As mmengine counts ``aten::layer_norm``: 5 per element with an affine weight, 4 without."""
    args = op_args(outputs)
    return math.prod(args['x']) * (5 if _gated(args.get('weight')) else 4)


def short_conv_handle(inputs, outputs):
    """A depthwise convolution: one multiply-add per token, channel and tap (as mmengine counts conv)."""
    args = op_args(outputs)
    return math.prod(args['x']) * args['weight'][-1]


def zero_handle(inputs, outputs):
    """A reduction (``sum_rows``): zero, as mmengine counts reductions."""
    return 0


def sdpa_handle(inputs, outputs):
    args = op_args(outputs)
    q, k, v = (_get(args, n) for n in ('query', 'key', 'value'))
    return sdpa_macs(q, k, v, bool(args.get('is_causal')))


# op name -> handle: the torch.library custom ops and the autograd Functions of their Triton paths
HANDLES = {'linear_attn': linear_attn_handle, 'linear_attn_qkv': linear_attn_qkv_handle, 'chunk_gla': chunk_gla_handle,
           'delta_rule': delta_rule_handle, 'hgrn': hgrn_handle, 'gsa': gsa_handle, 'layer_norm': layer_norm_handle,
           'short_conv': short_conv_handle, 'sum_rows': zero_handle}
PYTHON_OPS = {'LinearAttnFunction': linear_attn_handle, 'ChunkGLAFunction': chunk_gla_handle,
              'DeltaRuleFunction': delta_rule_handle, 'HGRNFunction': hgrn_handle}


def op_handles(namespace='vla_mm'):
    """Handles for ``FlopAnalyzer.set_op_handle``: ``<namespace>::<op>``, ``prim::PythonOp.<Function>``,
    ``aten::scaled_dot_product_attention`` and ``aten::rms_norm`` (which mmengine 0.10 does not count)."""
    from mmengine.analysis.jit_handles import norm_flop_counter
    h = {f'{namespace}::{name}': fn for name, fn in HANDLES.items()}
    h.update({f'prim::PythonOp.{name}': fn for name, fn in PYTHON_OPS.items()})
    h['aten::scaled_dot_product_attention'] = sdpa_handle
    h['aten::rms_norm'] = norm_flop_counter(2)  # as mmengine counts aten::layer_norm (weight at index 2)
    return h


OP_HANDLES = op_handles()


def registered_vla_ops():
    """Names of the ``vla_mm::`` custom ops defined in this process (backward ops excluded)."""
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith('vla_mm::')]
    return sorted(n for n in names if not n.endswith('_backward'))


# ----------------------------------------------------------------------------------------------- analysis
def analyze(model, inputs, extra_handles=None):
    """(FlopAnalyzer with vla_mm's handles, uncounted custom ops {kind: count}) of ``model(*inputs)``."""
    from mmengine.analysis import FlopAnalyzer
    flops = FlopAnalyzer(model, inputs).set_op_handle(**{**OP_HANDLES, **(extra_handles or {})})
    flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
    flops.total()
    uncounted = {k: v for k, v in flops.unsupported_ops().items()
                 if k.startswith(('prim::PythonOp', 'vla_mm::')) or '::' in k and not k.startswith(('aten::', 'prim::'))}
    return flops, uncounted


def _pipeline(cfg, loader):
    ds = (cfg.get(loader) or {}).get('dataset', {})
    while isinstance(ds, dict) and 'pipeline' not in ds and isinstance(ds.get('dataset'), dict):
        ds = ds['dataset']  # RepeatDataset, ClassBalancedDataset, ...
    return (ds.get('pipeline') if isinstance(ds, dict) else None) or []


def _hw(size):
    """(H, W) of a pipeline size: an int, or mmcv's (w, h)."""
    return (size, size) if isinstance(size, int) else (size[1], size[0])


def default_shape(cfg):
    """(H, W) of one input: crop_size, test crop / resize, train crop, backbone img_size, else 224."""
    if cfg.get('crop_size'):
        cs = cfg.crop_size
        return (cs, cs) if isinstance(cs, int) else tuple(cs)[:2]  # mmseg: (h, w)
    for loader in ('test_dataloader', 'val_dataloader'):
        for t in _pipeline(cfg, loader):
            if t.get('type') == 'CenterCrop' and t.get('crop_size'):
                return _hw(t['crop_size'])
            if t.get('type') == 'Resize' and t.get('scale') and not isinstance(t['scale'], float):
                return _hw(t['scale'])
    for t in _pipeline(cfg, 'train_dataloader'):
        if t.get('type') in ('RandomResizedCrop', 'RandomCrop') and (t.get('scale') or t.get('crop_size')):
            size = t.get('crop_size') or t.get('scale')
            if not isinstance(size, float):
                return _hw(size)
    size = cfg.get('model', {}).get('backbone', {}).get('img_size')
    if size:
        return (size, size) if isinstance(size, int) else tuple(size)[:2]
    return (224, 224)


def counted_forward(model, x):
    """Make ``model(x)`` the forward that is counted; returns its description."""
    import types
    if hasattr(model, 'extract_feat') and 'mode' in inspect.signature(model.forward).parameters:
        forward = model.forward
        try:
            with torch.no_grad():
                forward(x, mode='tensor')
            model.forward = types.MethodType(lambda self, inputs: forward(inputs, mode='tensor'), model)
            return "forward(mode='tensor')"
        except Exception:  # noqa: BLE001  (e.g. a detector's tensor mode needs data samples)
            pass
        model.forward = types.MethodType(lambda self, inputs: self.extract_feat(inputs), model)
        return 'extract_feat (backbone + neck)'
    return 'forward'


def count_config(cfg, shape):
    """(model, FlopAnalyzer, uncounted, what was counted) of a config's model on one ``shape`` image (CPU)."""
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).eval()
    in_ch = cfg.model.get('backbone', {}).get('in_channels', 3)
    x = torch.randn(1, in_ch, *shape)
    what = counted_forward(model, x)
    with torch.no_grad():
        flops, uncounted = analyze(model, (x, ))
    return model, flops, uncounted, what


def main(argv=None):
    p = argparse.ArgumentParser(description='Parameters and FLOPs of a config\'s model (vla_mm ops counted)')
    from mmengine.config import DictAction
    p.add_argument('config')
    p.add_argument('--shape', type=int, nargs='+', help='input H [W] (default: from the config, else 224)')
    p.add_argument('--detail', action='store_true', help='per-module table and per-operator counts')
    p.add_argument('--depth', type=int, default=3, help='module depth of the --detail table')
    p.add_argument('--json', help='also write the figures to this JSON file')
    p.add_argument('--allow-uncounted', action='store_true', help='do not fail on custom ops without a handle')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    a = p.parse_args(argv)
    import vla_mm  # noqa: F401  (registers the models, applies the compatibility fixes)
    from mmengine.analysis import parameter_count
    from mmengine.analysis.print_helper import complexity_stats_table

    from vla_mm.utils.cli import UserError, explain_exception, fail, load_config
    try:
        cfg = load_config(a.config, a.cfg_options)
        if a.shape and len(a.shape) not in (1, 2):
            raise UserError(f'--shape takes H or H W, got {a.shape}')
        shape = (tuple(a.shape) * 2)[:2] if a.shape else default_shape(cfg)
        model, flops, uncounted, what = count_config(cfg, shape)
    except UserError as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001
        msg = explain_exception(e)
        if msg is None:
            raise
        fail(msg)
    params = parameter_count(model)['']
    total = flops.total()
    by_op = flops.by_operator()
    ours = {k: v for k, v in by_op.items() if k in HANDLES or k in PYTHON_OPS or 'PythonOp' in k}
    print(f'config: {a.config}')
    print(f'input: 1x{cfg.model.get("backbone", {}).get("in_channels", 3)}x{shape[0]}x{shape[1]}; counted: {what}')
    print(f'params: {params / 1e6:.3f} M')
    print(f'flops:  {total / 1e9:.4f} G (multiply-adds)')
    if ours:
        print('vla_mm ops: ' + ', '.join(f'{k} {v / 1e9:.4f} G' for k, v in sorted(ours.items())))
    if a.detail:
        print('\nper operator (G): ' + ', '.join(f'{k} {v / 1e9:.4f}' for k, v in by_op.most_common()))
        zero = sorted(flops.unsupported_ops())
        if zero:
            print('counted as zero (elementwise, reductions, ...): ' + ', '.join(zero))
        print(complexity_stats_table(flops, max_depth=a.depth, show_param_shapes=False))
    if a.json:
        with open(a.json, 'w') as f:
            json.dump(dict(config=a.config, shape=list(shape), counted=what, params=params, flops=total,
                           by_operator=dict(by_op), uncounted=uncounted), f, indent=1)
    missing = [n for n in registered_vla_ops() if n.split('::')[1] not in HANDLES]
    if missing:
        print(f'warning: custom ops without a FLOP handle in tools/analysis/get_flops.py: {missing}',
              file=sys.stderr)
    if uncounted:
        print(f'error: ops counted as zero (no handle): {uncounted}; add one to HANDLES / PYTHON_OPS in '
              f'{osp.relpath(__file__)}', file=sys.stderr)
        if not a.allow_uncounted:
            return 3
    return 0


if __name__ == '__main__':
    sys.exit(main())
