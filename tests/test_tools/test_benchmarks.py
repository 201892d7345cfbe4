"""tools/benchmarks: the shared helpers (common.py) and CPU smoke runs of the op and model benchmarks (the GPU runs
are recorded in docs/benchmarks.md)."""
import importlib.util
import json
import math
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from tests.scripts import load_script

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BENCH = osp.join(ROOT, 'tools', 'benchmarks')
sys.path.insert(0, BENCH)
import common  # noqa: E402


def load(name):
    """A benchmark script as a module (under a private name: 'ops' and 'models' are common words)."""
    return load_script(osp.join(BENCH, f'{name}.py'), f'bench_{name}')


def test_rel_and_tolerance():
    b = torch.tensor([3.0, 4.0])
    assert common.rel(torch.tensor([3.0, 4.0]), b) == 0.0
    assert math.isclose(common.rel(torch.tensor([3.0, 4.5]), b), 0.1)
    assert common.rel(torch.tensor([float('nan'), 4.0]), b) == math.inf
    assert common.tolerance(torch.bfloat16) == 1e-2 and common.tolerance(torch.float32) == 1e-5


def test_timers_on_cpu():
    calls = []
    ms = common.bench(lambda: calls.append(1), warmup=1, rep=2, device='cpu')
    assert ms >= 0 and len(calls) >= 4  # warm-up calls, then at least 3 timed ones
    assert common.host_us(lambda: None, n=10, device='cpu') >= 0
    times = common.time_calls(lambda: sum(range(1000)), n=3, device='cpu')
    assert len(times) == 3 and all(t > 0 for t in times)
    assert common.peak_mib(lambda: None, device='cpu') is None


def test_floor_and_bandwidth():
    assert common.floor_ms(3e9, 3e12) == pytest.approx(1.0)
    assert common.nbytes(torch.zeros(4, dtype=torch.bfloat16), torch.zeros(2), None) == 16
    assert common.copy_bandwidth(nbytes=1 << 20, device='cpu') > 0


def test_tables_json_deadline_env(tmp_path):
    md = common.md_table([dict(a=1, b=0.123456), dict(a='x')], [('A', 'a'), ('B', 'b'), ('2B', lambda r: r.get('b'))])
    assert md.splitlines() == ['| A | B | 2B |', '| --- | --- | --- |', '| 1 | 0.1235 | 0.1235 |', '| x | - | - |']
    assert common.ratio(2.0, 4.0) == 0.5 and common.ratio(None, 1.0) is None and common.ratio(1.0, 0) is None
    path = tmp_path / 'r.json'
    common.write_json(str(path), dict(x=math.inf, d=torch.bfloat16, l=(1, 2.5)))
    assert json.load(open(path)) == dict(x='inf', d='torch.bfloat16', l=[1, 2.5])
    assert common.Deadline(100).expired(50) is False and common.Deadline(10).expired(50) is True
    assert common.Deadline(0).left() == math.inf
    env = common.describe_env()
    assert env['torch'] == torch.__version__ and 'device' in env and 'python' in env
    log = common.Log(str(tmp_path / 'log.txt'))
    assert common.guarded(log, 'part', lambda: 1 / 0) is None
    assert 'ZeroDivisionError' in (tmp_path / 'log.txt').read_text()


def test_plots(tmp_path, monkeypatch):
    panels = [('p', 'N', 'ms', {'a': ([1, 2, 4], [1.0, None, 3.0], '-o')})]
    if common.pyplot() is not None:
        assert common.plot_panels(str(tmp_path / 'a.png'), panels) and (tmp_path / 'a.png').stat().st_size > 0
    monkeypatch.setattr(common, 'pyplot', lambda: None)  # matplotlib missing: skipped, nothing written
    assert common.plot_panels(str(tmp_path / 'b.png'), panels) is False and not (tmp_path / 'b.png').exists()


def test_op_benchmark_smoke(tmp_path):
    ops = load('ops')
    out = tmp_path / 'ops'
    assert ops.main(['--smoke', '--out', str(out), '--ops', 'linear_attn,gla_vector,hgrn,bi_wkv']) == 0
    res = json.load(open(out / 'results.json'))
    assert [c['op'] for c in res['checks']] == ['linear_attn', 'gla_vector', 'hgrn']
    assert all(c['ok'] and c['errs']['o'] < 1e-5 for c in res['checks'])
    rows = res['bench']
    assert {(r['op'], r['N']) for r in rows} == {(o, n) for o in ('linear_attn', 'gla_vector', 'hgrn')
                                                 for n in (16, 32)}  # bi_wkv: no ours, its peer needs CUDA
    for r in rows:
        assert r['ours_fwd_ms'] > 0 and r['ours_fwdbwd_ms'] > 0 and 0 < r['floor_fwd_ms'] < r['floor_fwdbwd_ms']
    la = [r for r in rows if r['op'] == 'linear_attn']
    assert all(r['sdpa_fwdbwd_ms'] > 0 for r in la)  # the SDPA peer ran in the same process
    # forward floor: q, k, v and o once each (B1 H2 N K8 V8 fp32)
    assert la[0]['floor_fwd_ms'] == pytest.approx(4 * 2 * 16 * 8 * 4 / (res['copy_TBps'] * 1e12) * 1e3)
    assert {h['op'] for h in res['host']} >= {'linear_attn', 'hgrn'}
    md = (out / 'ops.md').read_text()
    assert '## forward + backward' in md and '## float64 checks' in md and 'ours / sdpa' in md
    assert res['peer_status']['linear_attn/fla'] == 'needs CUDA'


def test_op_benchmark_runs_the_kernels_in_the_interpreter(tmp_path):
    ops = load('ops')  # --backend triton: our Triton kernels on CPU tensors (TRITON_INTERPRET=1, tests/conftest.py)
    assert ops.main(['--smoke', '--out', str(tmp_path), '--backend', 'triton', '--ops', 'linear_attn', '--N', '16',
                     '--modes', 'fwd', '--no-host', '--rep', '1']) == 0
    res = json.load(open(tmp_path / 'results.json'))
    assert res['checks'][0]['ok'] and res['bench'][0]['ours_fwd_ms'] > 0


def test_op_benchmark_launch_list_is_an_ab_in_one_process(tmp_path, monkeypatch):
    """--launch with a JSON list: one run per op and setting into v1/<op>, v2/<op>, ..., op by op (a deadline
    that runs out loses the last ops of every setting, not the baseline's cases), each under its own launch
    options; a deadline under twice the case reserve still times every setting (the reserve is kept once)."""
    ops = load('ops')
    variants = [{}, {'linear_attn': {'block_n': 16, 'num_warps': 2}}]
    assert ops.main(['--smoke', '--out', str(tmp_path), '--backend', 'triton', '--ops', 'linear_attn', '--N', '16',
                     '--modes', 'fwd', '--no-host', '--rep', '1', '--launch', json.dumps(variants),
                     '--deadline', str(1.5 * ops.CASE_RESERVE)]) == 0
    for i, launch in enumerate(variants):
        res = json.load(open(tmp_path / f'v{i + 1}' / 'linear_attn' / 'results.json'))
        assert res['args']['launch'] == launch and res['checks'][0]['ok'] and res['bench'][0]['ours_fwd_ms'] > 0
    assert not (tmp_path / 'v3').exists()
    ab = (tmp_path / 'ab.md').read_text()   # each setting's times as ratios to v1's, per op and N
    assert (tmp_path / 'ab.png').stat().st_size > 0   # and their ms against N
    v1 = json.load(open(tmp_path / 'v1' / 'linear_attn' / 'results.json'))['bench'][0]
    v2 = json.load(open(tmp_path / 'v2' / 'linear_attn' / 'results.json'))['bench'][0]
    row = next(line for line in ab.splitlines() if line.startswith('| linear_attn | 16 |')).split('|')
    assert float(row[7]) == pytest.approx(v2['ours_fwd_ms'] / v1['ours_fwd_ms'], rel=1e-3)
    assert '"block_n": 16' in ab
    with pytest.raises(ValueError, match='block_q'):   # each setting goes to kernel_options, which checks it
        ops.main(['--smoke', '--out', str(tmp_path / 'bad'), '--ops', 'linear_attn', '--N', '16', '--modes', 'fwd',
                  '--no-host', '--no-check', '--rep', '1', '--launch', '[{}, {"linear_attn": {"block_q": 1}}]'])
    assert (tmp_path / 'bad' / 'v1' / 'linear_attn' / 'results.json').exists()
    calls = []   # op by op, every setting in turn, each run with its share of what is left
    monkeypatch.setattr(ops, 'run_benchmark', lambda b: calls.append((b.ops, b.launch, b.deadline, b.profile)) or 0)
    ops.main(['--smoke', '--out', str(tmp_path / 'order'), '--ops', 'linear_attn,gla_none', '--launch',
              '[{}, {"inter": {"num_warps": 8}}]', '--deadline', '150', '--profile', 'gla_none@16'])
    assert [c[3] for c in calls] == ['', '', 'gla_none@16', 'gla_none@16']   # each op's profiles in its runs
    assert [c[:2] for c in calls] == [('linear_attn', {}), ('linear_attn', {'inter': {'num_warps': 8}}),
                                      ('gla_none', {}), ('gla_none', {'inter': {'num_warps': 8}})]
    assert calls[0][2] == pytest.approx((150 - ops.CASE_RESERVE) / 4 + ops.CASE_RESERVE, abs=1)
    assert calls[-1][2] == pytest.approx(150, abs=1)   # nothing spent by the stub: all that is left
    with pytest.raises(ValueError, match='gla_bwd_fp32'):   # "_options": the other kernel_options fields
        ops.main(['--smoke', '--out', str(tmp_path / 'opt'), '--ops', 'linear_attn', '--N', '16', '--modes', 'fwd',
                  '--no-host', '--no-check', '--rep', '1', '--launch', '[{"_options": {"gla_bwd_fp32": "x"}}]'])


def test_op_benchmark_check_catches_a_wrong_op(tmp_path, monkeypatch):
    ops = load('ops')
    specs = ops._specs()
    good = specs['linear_attn']
    bad = ops.OpSpec('bad', good.make, lambda x: good.ours(x) * 1.001, good.reference, causal=False)
    monkeypatch.setattr(ops, '_specs', lambda: dict(bad=bad))
    assert ops.main(['--smoke', '--out', str(tmp_path), '--N', '16', '--modes', 'fwd']) == 1
    check = json.load(open(tmp_path / 'results.json'))['checks'][0]
    assert not check['ok'] and 1e-4 < check['errs']['o'] < 1e-2


class FakeTimmAttention(nn.Module):
    def __init__(self, C, heads):
        super().__init__()
        self.num_heads, self.qkv, self.proj, self.proj_drop = heads, nn.Linear(C, 3 * C), nn.Linear(C, C), nn.Identity()


def test_host_cpu_times_the_triton_path_with_launches_skipped(tmp_path):
    """host_cpu.py: our ops' Triton path on CPU tensors with every launch skipped: the launches it counts are the
    kernels a fwd+bwd call runs, and the floor (an autograd.Function that only allocates) is cheaper than ours."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}   # compiled kernels, never launched
    args = ['--out', str(tmp_path), '--ops', 'linear_attn,layer_norm,hgrn', '--N', '16', '--K', '16', '--V', '16',
            '--calls', '5', '--profile']
    subprocess.run([sys.executable, osp.join(BENCH, 'host_cpu.py'), *args], env=env, check=True, cwd=ROOT)
    rows = {r['op']: r for r in json.load(open(tmp_path / 'results.json'))['rows']}
    # linear_attn: state + output, then the recomputed state, dq and dk / dv; one launch each way for the others
    assert {n: r['launches'] for n, r in rows.items()} == dict(linear_attn=5, layer_norm=2, hgrn=2)
    for r in rows.values():
        assert 0 < r['floor_fwdbwd_us'] < r['ours_fwdbwd_us'] and 'norm_bwd' in rows['layer_norm']['profile']
    text = (tmp_path / 'host_cpu.md').read_text()
    assert '| linear_attn | 5 |' in text and '## hgrn' in text


def test_timm_attention_swap_uses_timm_layout():
    from vla_mm.ops.linear_attn import linear_attn_reference
    models = load('models')
    B, N, C, H = 2, 10, 12, 3
    attn = FakeTimmAttention(C, H)
    swap = models.TimmLinearAttention(attn, feature_map='relu')
    x = torch.randn(B, N, C)
    # timm's qkv output is [3, H, D] along the last dim: q is the first C columns, split into heads
    q, k, v = (t.reshape(B, N, H, C // H) for t in attn.qkv(x).chunk(3, dim=-1))
    expect = attn.proj(linear_attn_reference(q, k, v, feature_map='relu').reshape(B, N, C))
    torch.testing.assert_close(swap(x, attn_mask=None), expect)
    assert swap.qkv is attn.qkv and swap.proj is attn.proj  # the same weights, no copies


def test_model_benchmark_smoke(tmp_path):
    models = load('models')
    out = tmp_path / 'models'
    assert models.main(['--smoke', '--out', str(out), '--res', '32', '--batch', '2', '--profile', '32',
                        '--profile-modes', 'eager,compile', '--steps', '1', '--host-probe', '32', '--host-profile',
                        '--launch', '{"norm_bwd": {"tile": 1}}']) == 0
    res = json.load(open(out / 'results.json'))
    assert res['args']['launch'] == {'norm_bwd': {'tile': 1}}
    probes = [r for r in res['rows'] if r.get('probe') == 'host']
    assert sorted((r['model'], r['mode'], r['res'], r['batch']) for r in probes if r['model'] == 'ours') == [
        ('ours', 'compile', 32, 1), ('ours', 'eager', 32, 1)]
    assert all(r['train_ms'] > 0 and 'infer_ms' not in r for r in probes)
    host_md = (out / 'host_profile.md').read_text()  # the probe steps' cProfile: our model's forward among them
    assert '## ours, eager: 5 train steps at 32 px' in host_md and 'isotropic.py' in host_md
    ours = [r for r in res['rows'] if r['model'] == 'ours' and 'probe' not in r]
    assert {r['mode'] for r in ours} == {'eager', 'compile'} and all(r['batch'] == 2 for r in ours)
    for r in ours:
        assert 'error' not in r and r['train_img_s'] > 0 and r['infer_img_s'] > 0, r
        assert 0 <= r['train_spread'] < 10 and 0 <= r['infer_spread'] < 10, r  # (slowest - fastest) / median run
        if r['mode'] == 'compile':  # one graph for training, one for inference, no break
            assert (r['graphs'], r['graph_breaks']) == (2, 0), r
        assert r['params_M'] == pytest.approx(
            sum(p.numel() for p in models.build_ours(res['backbone'], 32, models.parse_args(
                ['--smoke', '--out', str(out)]), torch.device('cpu')).parameters()) / 1e6)
    has_timm = importlib.util.find_spec('timm') is not None
    assert any(r['model'] == 'timm_sdpa' for r in res['rows']) == has_timm
    if not has_timm:
        assert any('timm is not installed' in n for n in res['notes'])
    md = (out / 'models.md').read_text()
    assert '## train, eager' in md and '## infer, compile' in md and 'ours / timm SDPA' in md
    prof = (out / 'profile_32.md').read_text()
    assert '## ours' in prof and 'aten::contiguous' in prof
    prof = (out / 'profile_32_compile.md').read_text()
    assert '(2 steps, compile,' in prof and '## ours' in prof
    assert set(res['profile']) == {'32', '32_compile'} and 'ours' in res['profile']['32_compile']
    assert '(32 px, compile; profile_32_compile.md' in md
    assert '## host time of a train step (32 px, batch 1' in md
    with pytest.raises(ValueError, match="no kernel reads 'norm_bwdd'"):
        models.main(['--smoke', '--out', str(tmp_path / 'bad'), '--launch', '{"norm_bwdd": {"tile": 1}}'])


def test_model_benchmark_cached_suffix_times_the_same_model_with_the_launch_cache(tmp_path, monkeypatch):
    """``<model>+cached`` builds the model of its base name and times it (and its host profile) under
    ``kernel_options(launch_cache=True)``; the base model runs without the cache."""
    from vla_mm.ops.common import current_options
    models = load('models')
    a = models.parse_args(['--smoke', '--out', str(tmp_path), '--kinds', 'train'])
    seen = []

    def measure(fn, batch, a, device, graphs=False):
        seen.append((current_options().launch_cache, graphs))
        return 1.0, 1.0, 0.0, None, 0.0
    monkeypatch.setattr(models, 'measure', measure)
    bcfg = models.backbone_cfg(a)
    for name in ('ours', 'ours+cached', 'ours_fused_ln+cached'):
        row = models.run_case(name, 32, 1, 'eager', a, torch.device('cpu'), bcfg)
        assert row['model'] == name and 'error' not in row and row['params_M'] > 0, row
    assert seen == [(False, False), (True, False), (True, False)]
    # CUDA-graph replay (reduce-overhead) takes its peak memory over every step, the graphs' recording included
    ro = models.parse_args(['--smoke', '--out', str(tmp_path), '--compile-mode', 'reduce-overhead'])
    assert models.uses_graphs('compile', ro) and not models.uses_graphs('eager', ro)
    assert not models.uses_graphs('compile', a)


def test_model_benchmark_norm_variants_are_ours_with_that_norm(tmp_path):
    """The fused-norm A/B: ``ours`` (the backbone's default) and ``ours_fused_ln`` have our fused LayerNorm in every
    norm, ``ours_ln`` torch's, with the same parameters; ``ours_bias_grad`` has every linear a BiasGradLinear; the
    norm ops get their specs (our op and the torch peer, checked against float64)."""
    from vla_mm.models.layers import FusedLayerNorm
    models = load('models')
    a = models.parse_args(['--smoke', '--out', str(tmp_path)])
    bcfg = models.backbone_cfg(a)
    built = [models.build(n, 32, a, torch.device('cpu'), bcfg) for n in ('ours', 'ours_fused_ln', 'ours_ln',
                                                                          'ours_bias_grad')]
    linears = [[type(m).__name__ for m in x.modules() if isinstance(m, torch.nn.Linear)] for x in built]
    assert set(linears[0]) == {'Linear'} and linears[3] == ['BiasGradLinear'] * len(linears[0])  # head included
    norms = [[type(m) for m in x.modules() if isinstance(m, torch.nn.LayerNorm)] for x in built]
    assert norms[2] and all(t is torch.nn.LayerNorm for t in norms[2])
    assert norms[0] == norms[1] == [FusedLayerNorm] * len(norms[2])
    assert {m.min_rows for m in built[1].modules() if isinstance(m, FusedLayerNorm)} == {0}  # the op at every size
    assert len({sum(p.numel() for p in m.parameters()) for m in built}) == 1
    ops = load('ops')
    assert ops.main(['--smoke', '--out', str(tmp_path / 'ops'), '--ops', 'layer_norm,gated_rms_norm,short_conv',
                     '--backend', 'triton', '--launch', '{"norm_bwd": {"loop_stages": 2, "progs_per_sm": 1}}']) == 0
    res = json.load(open(tmp_path / 'ops' / 'results.json'))
    assert res['args']['launch'] == dict(norm_bwd=dict(loop_stages=2, progs_per_sm=1))
    assert [c['op'] for c in res['checks']] == ['layer_norm', 'gated_rms_norm', 'short_conv']
    assert all(c['ok'] for c in res['checks'])
    assert all(r['torch_fwdbwd_ms'] > 0 for r in res['bench'])
    assert all(r['cudnn_fwdbwd_ms'] > 0 for r in res['bench'] if r['op'] == 'short_conv')  # the conv1d peer
