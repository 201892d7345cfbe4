"""tools/analysis/get_flops.py: vla_mm's ops are counted with their real multiply-adds, whether a trace shows them
as torch.library custom ops (``<ns>::<op>``), as Python autograd functions (``prim::PythonOp.<Function>``) or as
the plain reference's einsums; an op without a handle is reported, never silently zero."""
import math
import os.path as osp
import sys
from typing import Optional

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
import get_flops  # noqa: E402

NS = 'vla_mm_flops_test'  # a test namespace: the real vla_mm:: ops may be defined in this process too


# tiny custom ops with the public ops' argument names; their bodies only make outputs of the right shape
@torch.library.custom_op(f'{NS}::linear_attn', mutates_args=())
def _la(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, feature_map: str, normalize: bool) -> torch.Tensor:
    return v.clone()


@torch.library.custom_op(f'{NS}::chunk_gla', mutates_args=())
def _gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor], u: Optional[torch.Tensor],
         chunk_size: int) -> torch.Tensor:
    return v.clone()


@torch.library.custom_op(f'{NS}::delta_rule', mutates_args=())
def _delta(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: Optional[torch.Tensor],
           chunk_size: int) -> torch.Tensor:
    return v.clone()


@torch.library.custom_op(f'{NS}::hgrn', mutates_args=())
def _hgrn(x: torch.Tensor, g: torch.Tensor, gated_input: bool) -> torch.Tensor:
    return x.clone()


@torch.library.custom_op(f'{NS}::gsa', mutates_args=())
def _gsa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return v.clone()


@torch.library.custom_op(f'{NS}::no_handle', mutates_args=())
def _no_handle(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


class LinearAttnFunction(torch.autograd.Function):
    """Stands for the Triton path's autograd function (same class name and forward signature)."""

    @staticmethod
    def forward(ctx, q, k, v, plan):
        return v.clone()

    @staticmethod
    def backward(ctx, do):
        return None, None, do, None


class ChunkGLAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, gk, gv, u, scale, h0, output_final_state, cu_seqlens, reverse, chunk_size):
        return v.clone(), None

    @staticmethod
    def backward(ctx, do, dht):
        return (None, ) * 12


class Plan:
    consts = dict(NORMALIZE=False)


class Call(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def count(fn, *inputs):
    flops, uncounted = get_flops.analyze(Call(fn), inputs, get_flops.op_handles(NS))
    return flops.total(), uncounted, flops.by_operator()


B, N, H, K, V = 2, 100, 3, 8, 16


def qkv(K=K, V=V):
    return torch.randn(B, N, H, K), torch.randn(B, N, H, K), torch.randn(B, N, H, V)


def test_custom_op_handles_count_the_formulas():
    q, k, v = qkv()
    # non-causal linear attention: state + output 2 N K V per head, normaliser N K
    total, unc, ops = count(lambda q, k, v: _la(q, k, v, 'elu1', True), q, k, v)
    assert total == B * H * (2 * N * K * V + N * K) and ops['linear_attn'] == total and not unc
    total, _, _ = count(lambda q, k, v: _la(q, k, v, 'elu1', False), q, k, v)
    assert total == B * H * 2 * N * K * V
    # chunked GLA, chunk 64 (N = 100: intra-chunk 100 * 64 * (K + V) / 2), with and without the RWKV6 bonus
    g = torch.randn(B, N, H, K)
    total, unc, _ = count(lambda q, k, v, g: _gla(q, k, v, g, None, 64), q, k, v, g)
    assert total == B * H * (N * 64 * (K + V) // 2 + 2 * N * K * V) and not unc
    u = torch.randn(H, K)
    total, _, _ = count(lambda q, k, v, g, u: _gla(q, k, v, g, u, 16), q, k, v, g, u)
    assert total == B * H * (N * 16 * (K + V) // 2 + 2 * N * K * V + N * (K + V))
    # chunk longer than the sequence: the whole sequence is one chunk
    total, _, _ = count(lambda q, k, v: _gla(q, k, v, None, None, 4096), q, k, v)
    assert total == B * H * (N * N * (K + V) // 2 + 2 * N * K * V)
    # delta rule, WY form, chunk 32
    beta = torch.rand(B, N, H)
    total, unc, _ = count(lambda q, k, v, b: _delta(q, k, v, b, None, 32), q, k, v, beta)
    C = 32
    assert total == B * H * (N * C * (K + V) + N * C * K // 2 + N * C * C // 6 + 3 * N * K * V) and not unc
    # HGRN over D channels: 2 multiply-adds per element with the input gate, 1 without
    x = torch.randn(B, N, 48)
    assert count(lambda x, g: _hgrn(x, g, True), x, x)[0] == 2 * B * N * 48
    assert count(lambda x, g: _hgrn(x, g, False), x, x)[0] == B * N * 48
    # GSA: two chunked passes K -> M slots, M -> V
    M = 6
    s = torch.randn(B, N, H, M)
    total, _, _ = count(lambda q, k, v, s: _gsa(q, k, v, s, s), q, k, v, s)
    assert total == B * H * (N * 64 * (K + M) // 2 + 2 * N * K * M + N * 64 * (M + V) // 2 + 2 * N * M * V)


def test_python_autograd_functions_are_counted_by_name():
    q, k, v = qkv()
    total, unc, ops = count(lambda q, k, v: LinearAttnFunction.apply(q, k, v, Plan()), q, k, v)
    assert total == B * H * 2 * N * K * V and not unc  # the plan says normalize=False
    assert ops['PythonOp.LinearAttnFunction'] == total
    g = torch.randn(B, N, H, K)
    total, unc, _ = count(lambda q, k, v, g: ChunkGLAFunction.apply(q, k, v, g, None, None, 0.1, None, False, None,
                                                                    False, 32)[0], q, k, v, g)
    assert total == B * H * (N * 32 * (K + V) // 2 + 2 * N * K * V) and not unc


def test_an_op_without_a_handle_is_reported_not_zero():
    x = torch.randn(4, 5)
    total, unc, _ = count(lambda x: _no_handle(x) @ x.t(), x)
    assert unc == {f'{NS}::no_handle': 1}
    assert total == 4 * 5 * 4  # the matmul still counts


def test_rms_norm_is_counted_like_layer_norm():
    x, w = torch.randn(2, 7, 16), torch.ones(16)
    assert count(lambda x, w: F.rms_norm(x, (16, ), w), x, w)[0] == count(
        lambda x, w: F.layer_norm(x, (16, ), w, w), x, w)[0] == 2 * 7 * 16 * 5


def test_fused_norm_op_is_counted_like_layer_norm():
    """The real ``vla_mm::layer_norm`` custom op (what a traced call of the op records) counts as mmengine counts
    ``aten::layer_norm``; the FusedLN module traces torch's norm itself."""
    from vla_mm.models.layers import FusedLayerNorm
    from vla_mm.ops.norm import layer_norm
    x, w = torch.randn(2, 7, 16), torch.ones(16)
    flops, uncounted = get_flops.analyze(Call(lambda x, w: layer_norm(x, w, w)), (x, w), get_flops.op_handles())
    assert flops.total() == 2 * 7 * 16 * 5 and not uncounted and flops.by_operator()['layer_norm'] == flops.total()
    flops, _ = get_flops.analyze(Call(lambda x: layer_norm(x)), (x, ), get_flops.op_handles())
    assert flops.total() == 2 * 7 * 16 * 4
    flops, uncounted = get_flops.analyze(FusedLayerNorm(16), (x, ), get_flops.op_handles())
    assert flops.total() == 2 * 7 * 16 * 5 and not uncounted


def test_short_conv_op_is_counted_like_a_depthwise_conv():
    """One multiply-add per token, channel and tap (mmengine's count of the same ``nn.Conv1d(groups=C)``)."""
    from vla_mm.ops.conv import short_conv
    x, w = torch.randn(2, 7, 16), torch.randn(16, 3)
    flops, uncounted = get_flops.analyze(Call(lambda x, w: short_conv(x, w, activation='silu')), (x, w),
                                         get_flops.op_handles())
    assert flops.total() == 2 * 7 * 16 * 3 and not uncounted and flops.by_operator()['short_conv'] == flops.total()
    conv = torch.nn.Conv1d(16, 16, 3, padding=1, groups=16, bias=False)  # 7 outputs of 3 taps, as the op
    assert get_flops.analyze(conv, (x.transpose(1, 2), ), get_flops.op_handles())[0].total() == flops.total()


def test_sdpa_is_counted():
    q, k, v = (torch.randn(2, 3, 50, 8) for _ in range(3))
    full = 2 * 3 * 50 * 50 * (8 + 8)
    assert count(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, k, v)[0] == full
    assert count(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v)[0] == full // 2


class TinyLinearAttn(nn.Module):
    """qkv projection -> vla_mm.ops.linear_attn.linear_attn -> output projection (counted by hand below)."""

    def __init__(self, C=16, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)

    def forward(self, x):
        from vla_mm.ops.linear_attn import linear_attn
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).unbind(2)
        return self.proj(linear_attn(q, k, v).reshape(B, N, C))


def test_model_with_the_public_linear_attn_op_equals_the_hand_count():
    import vla_mm  # noqa: F401
    Bt, Nt, C, h = 2, 12, 16, 2
    d = C // h
    flops, unc = get_flops.analyze(TinyLinearAttn(C, h), (torch.randn(Bt, Nt, C), ))
    hand = Bt * Nt * C * 3 * C + Bt * h * (2 * Nt * d * d + Nt * d) + Bt * Nt * C * C
    assert not unc and flops.total() == hand
    ops = flops.by_operator()
    # the op is counted, by its handle (a custom op) or through the reference's einsums
    assert ops.get('linear_attn', 0) + ops.get('einsum', 0) == Bt * h * (2 * Nt * d * d + Nt * d) > 0


def tiny_config(tmp_path):
    path = tmp_path / 'tiny.py'
    path.write_text(f"""_base_ = [{osp.join(ROOT, 'configs/linear_attn/linear-attn-t_1xb64_shapes-48px.py')!r}]
model = dict(backbone=dict(arch=dict(_delete_=True, embed_dims=16, num_layers=2, num_heads=2, mlp_ratio=2.0)),
             head=dict(in_channels=16))
""")
    return str(path)


def test_cli_on_a_tiny_config(tmp_path, capsys):
    from mmengine.config import Config
    cfg_path = tiny_config(tmp_path)
    cfg = Config.fromfile(cfg_path)
    img = cfg.model.backbone.img_size
    out = tmp_path / 'flops.json'
    assert get_flops.main([cfg_path, '--json', str(out), '--detail']) == 0
    text = capsys.readouterr().out
    assert f'1x3x{img}x{img}' in text and "forward(mode='tensor')" in text and 'backbone.layers' in text
    import json
    res = json.load(open(out))
    assert res['shape'] == [img, img] and res['params'] > 0 and not res['uncounted']
    # the linear-attention op is counted: per layer B H (2 N d d + N d) with the config's heads and tokens
    ntok = (img // cfg.model.backbone.patch_size) ** 2  # patch or conv stem: total stride = patch size
    ops = res['by_operator']
    # the op is linear_attn_qkv (the packed projection) or, with the LePE branch, linear_attn on the views
    la = ops.get('linear_attn_qkv', 0) + ops.get('linear_attn', 0) + ops.get('einsum', 0)
    assert la == 2 * 2 * (2 * ntok * 8 * 8 + ntok * 8)
    # --shape overrides the config's size
    assert get_flops.main([cfg_path, '--shape', '32', '64', '--json', str(out)]) == 0
    assert json.load(open(out))['shape'] == [32, 64]


@pytest.mark.parametrize('config, shape', [
    ('linear_attn/linear-attn-s_8xb128_in1k.py', (224, 224)),
    ('linear_attn/upernet_linear-attn-t_4xb4-160k_ade20k-512x512.py', (512, 512)),
    ('linear_attn/mask-rcnn_linear-attn-t_sfp-fpn_1x_coco.py', (800, 1333)),
    ('linear_attn/linear-attn-t_1xb64_shapes-48px.py', None),
])
def test_default_shape_from_the_config(config, shape):
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs', config))
    got = get_flops.default_shape(cfg)
    if shape is None:  # no crop or resize in the pipeline: the backbone's img_size
        shape = (cfg.model.backbone.img_size, ) * 2
    assert tuple(got) == shape


def test_formulas_in_one_line_each():
    # the documented per-op formulas are the ones the handles use
    assert get_flops.linear_attn_macs(1, 10, 1, 4, 4) == 2 * 10 * 16 + 40
    assert get_flops.sdpa_macs((1, 1, 10, 4), (1, 1, 10, 4), (1, 1, 10, 4), False) == 10 * 10 * 8
    assert get_flops.delta_rule_macs(1, 64, 1, 4, 4, 64) == 64 * 64 * 8 + 64 * 64 * 2 + 64 * 64 * 64 // 6 + 3 * 64 * 16
    assert math.isclose(get_flops.chunk_gla_macs(1, 128, 1, 4, 4, 64), 128 * 64 * 4 + 2 * 128 * 16)
