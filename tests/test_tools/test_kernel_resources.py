"""tools/analysis/kernel_resources.py: our kernels' launches caught on CPU tensors, compiled offline for sm_90,
registers / spills / shared memory reported per kernel with the launch options the host code chose."""
import json
import os
import os.path as osp
import subprocess
import sys

from tests.scripts import load_script

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'analysis', 'kernel_resources.py')


def run_tool(out, *args):
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}  # JIT kernels, not interpreted ones
    proc = subprocess.run([sys.executable, TOOL, '--out', str(out), '--B', '1', '--H', '2', '--N', '64', '--K', '32',
                           '--V', '32', *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.load(open(out / 'resources.json'))['rows']


def test_kernel_resources_of_the_norm_follow_its_launch_options(tmp_path):
    rows = run_tool(tmp_path / 'default', '--ops', 'layer_norm', '--ptx')
    assert [r['kernel'] for r in rows] == ['_ln_fwd_kernel', '_ln_bwd_kernel']
    # the defaults: forward tiles of 4096 elements (64 rows of 64 here), 8 warps; backward 2048 (32 rows), 8
    # elements a thread: 8 warps
    for r, warps in zip(rows, (8, 8)):
        assert r['launches'] == 1 and r['registers'] > 0 and r['spill_stores'] == 0 and r['shared_kib'] > 0, r
        assert r['num_warps'] == warps, r
        assert 1 <= r['blocks_per_sm'] <= 8
    ptx = sorted(p.name for p in (tmp_path / 'default').glob('*.ptx'))
    assert len(ptx) == 2 and all('.entry' in (tmp_path / 'default' / p).read_text() for p in ptx), ptx
    bwd = run_tool(tmp_path / 'variant', '--ops', 'layer_norm', '--launch',
                   '{"norm_bwd": {"tile": 1, "num_warps": 2}}')[1]
    assert bwd['kernel'] == '_ln_bwd_kernel' and bwd['num_warps'] == 2
    md = (tmp_path / 'variant' / 'resources.md').read_text()
    assert '| layer_norm | _ln_bwd_kernel | 1 |' in md and "launch {'norm_bwd'" in md


def test_blocks_per_multiprocessor():
    """Programs resident on one Hopper SM: bound by registers (256 per warp), shared memory or warps."""
    tool = load_script(TOOL, 'kernel_resources')
    assert tool.blocks_per_sm(255, 8, 72 * 1024, 90) == 1     # registers: 8 warps x 32 x 256 = 64K
    assert tool.blocks_per_sm(46, 8, 4096, 90) == 5           # 48 x 32 per warp -> 5 blocks of 8 warps
    assert tool.blocks_per_sm(32, 4, 100 * 1024, 90) == 2     # shared memory: 228 KB / 101 KB
    assert tool.blocks_per_sm(16, 2, 0, 90) == 32             # the block limit
    assert tool.blocks_per_sm(None, 4, 0, 90) is None


def test_short_conv_kernels_compile_without_spills_with_shared_taps_too(tmp_path):
    """Dense, and packed + reversed + 3 taps, at the default launch and with the backward's shared_taps variant
    (a tuple index must be spelt in constexprs to compile: the interpreter took it either way)."""
    for launch in ('{}', '{"short_conv_bwd": {"shared_taps": true}}'):
        rows = run_tool(tmp_path / str(len(launch)), '--ops', 'short_conv,short_conv_packed', '--launch', launch)
        assert [(r['op'], r['kernel']) for r in rows] == [(op, k) for op in ('short_conv', 'short_conv_packed')
                                                          for k in ('_conv_fwd_kernel', '_conv_bwd_kernel')]
        for r in rows:
            assert 'compile error' not in r.get('note', '') and r['registers'] > 0 and r['spill_stores'] == 0, r


def test_every_op_kernel_compiles_for_hopper(tmp_path):
    """Every kernel every op spec launches (each family, its options, packed and reversed paths) compiles for
    sm_90 on the CPU: the interpreter the kernel tests run on does not compile, so a kernel it runs can still fail
    Triton's compiler on the GPU (session 15: the short convolution's packed path)."""
    # K = V = 128: the delta rule's and linear_attn's K > 64 paths (one shape: ~70 s of compiles on a cold cache)
    rows = run_tool(tmp_path, '--ops', 'all', '--K', '128', '--V', '128', '--N', '256')
    assert {r['op'] for r in rows} >= {'linear_attn', 'gla_vector', 'rwkv6', 'delta_rule', 'gated_delta_rule',
                                       'hgrn', 'gsa', 'layer_norm', 'short_conv_packed', 'sum_rows'}
    bad = [(r['op'], r['kernel'], r['note'][:200]) for r in rows if 'compile error' in r.get('note', '')]
    assert not bad and all(r['registers'] > 0 for r in rows), bad


def test_time_split_state_kernels_compile_for_hopper(tmp_path):
    """The summary and main passes of the time-split sequential kernels (the GLA family's state kernels, HGRN's
    scan) compile for sm_90: the plan only splits at few programs an SM, so it is forced here (session 16: a
    helper returning from inside a constexpr branch compiled in the interpreter and failed Triton's compiler)."""
    rows = run_tool(tmp_path, '--ops', 'gla_vector,gla_scalar,rwkv6,gsa,hgrn', '--N', '256', '--launch',
                    '{"gla_state": {"segment": 1, "split_adj": true}, "hgrn": {"segment": 64}}')
    bad = [(r['op'], r['kernel'], r['note'][:200]) for r in rows if 'compile error' in r.get('note', '')]
    assert not bad and all(r['registers'] > 0 for r in rows), bad
    kernels = [(r['op'], r['kernel']) for r in rows]
    # summary + main pass each: the forward's states, the backward's recomputed states and state gradients
    assert kernels.count(('gla_vector', '_fwd_h_kernel')) == 4 and kernels.count(('gla_vector', '_bwd_dh_kernel')) == 2
    assert kernels.count(('hgrn', '_hgrn_fwd_kernel')) == 2 and kernels.count(('hgrn', '_hgrn_bwd_kernel')) == 2
    # split_adj: the bonus form's backward splits its boundary terms as well (summary and main passes)
    assert kernels.count(('rwkv6', '_bwd_dh_kernel')) == 2 and kernels.count(('rwkv6', '_fwd_h_kernel')) == 4


def test_default_paths_compile_and_local_lightens_the_sequential_backward(tmp_path):
    """The default kernel paths compile for sm_90 at K = V = 128 in bf16 against the ones they replaced: the
    delta rule's chunk-local backward terms from the parallel ``_dlocal_kernel`` (K in two halves), which leaves
    ``_dstate``'s loop without the spills of its in-loop build there, and simple GLA's scores formed in
    ``_fwd_oA_kernel`` and its strict-pair dq / dk in ``_bwd_dA_kernel`` (no ``_fwd_A_kernel``, no
    ``_bwd_intra_kernel``), and its strict-pair dq / dk in ``_bwd_inter_kernel`` (``fuse_da``: no
    ``_bwd_dA_kernel``; without it, in ``_bwd_dA_kernel``); a ``maxnreg`` launch key caps registers."""
    args = ('--K', '128', '--V', '128', '--N', '256')
    base = {(r['op'], r['kernel']): r for r in run_tool(
        tmp_path / 'base', '--ops', 'gated_delta_rule', *args, '--launch',
        '{"delta_rule_dstate": {"local": false}, "fwd_oA": {"fuse_a": false}, "dA": {"fuse_intra": false}}')}
    opt = {(r['op'], r['kernel']): r for r in run_tool(tmp_path / 'opt', '--ops', 'gated_delta_rule,gla_scalar',
                                                        *args)}
    bad = [(k, r['note'][:200]) for k, r in opt.items() if 'compile error' in r.get('note', '')]
    assert not bad and all(r['registers'] > 0 for r in opt.values()), bad
    dr = 'gated_delta_rule'
    assert (dr, '_dlocal_kernel') in opt and (dr, '_dlocal_kernel') not in base
    assert opt[(dr, '_dstate_kernel')]['spill_stores'] == 0 < base[(dr, '_dstate_kernel')]['spill_stores']
    assert opt[(dr, '_dlocal_kernel')]['spill_stores'] == 0
    assert ('gla_scalar', '_fwd_oA_kernel') in opt and ('gla_scalar', '_fwd_A_kernel') not in opt
    assert ('gla_scalar', '_bwd_dA_kernel') not in opt and ('gla_scalar', '_bwd_intra_kernel') not in opt
    assert opt[('gla_scalar', '_bwd_inter_kernel')]['registers']
    apart = {(r['op'], r['kernel']): r for r in run_tool(tmp_path / 'apart', '--ops', 'gla_scalar', *args, '--launch',
                                                         '{"inter": {"fuse_da": false}, "fwd_oA": {"maxnreg": 96}}')}
    assert apart[('gla_scalar', '_bwd_dA_kernel')]['registers'] and ('gla_scalar', '_bwd_intra_kernel') not in apart
    # maxnreg (a launch key of every kernel) caps the kernel's registers
    fwd_oa = ('gla_scalar', '_fwd_oA_kernel')
    assert apart[fwd_oa]['registers'] <= 96 < opt[fwd_oa]['registers'], (apart[fwd_oa], opt[fwd_oa])
    # K = 64 (the timed shape): the sequential kernels on two pipeline stages, no spill in them or in _dlocal
    k64 = {r['kernel']: r for r in run_tool(tmp_path / 'k64', '--ops', 'gated_delta_rule', '--N', '256')}
    assert [k64[n]['num_stages'] for n in ('_state_kernel', '_dstate_kernel')] == [2, 2]
    assert [k64[n]['spill_stores'] for n in ('_state_kernel', '_dstate_kernel', '_dlocal_kernel')] == [0, 0, 0]
