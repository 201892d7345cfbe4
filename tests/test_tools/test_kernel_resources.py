"""tools/analysis/kernel_resources.py: our kernels' launches caught on CPU tensors, compiled offline for sm_90,
registers / spills / shared memory reported per kernel with the launch options the host code chose."""
import json
import os
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(ROOT, 'tools', 'analysis', 'kernel_resources.py')


def run_tool(out, *args):
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}  # JIT kernels, not interpreted ones
    proc = subprocess.run([sys.executable, TOOL, '--out', str(out), '--B', '1', '--H', '2', '--N', '64', '--K', '32',
                           '--V', '32', *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.load(open(out / 'resources.json'))['rows']


def test_kernel_resources_of_the_norm_follow_its_launch_options(tmp_path):
    rows = run_tool(tmp_path / 'default', '--ops', 'layer_norm')
    assert [r['kernel'] for r in rows] == ['_ln_fwd_kernel', '_ln_bwd_kernel']
    for r in rows:
        assert r['launches'] == 1 and r['registers'] > 0 and r['spill_stores'] == 0 and r['shared_kib'] > 0, r
        assert r['num_warps'] == 8  # the default for tiles of 2048 elements or more (64 rows of 64 here)
    bwd = run_tool(tmp_path / 'variant', '--ops', 'layer_norm', '--launch',
                   '{"norm_bwd": {"tile": 1, "num_warps": 2}}')[1]
    assert bwd['kernel'] == '_ln_bwd_kernel' and bwd['num_warps'] == 2
    md = (tmp_path / 'variant' / 'resources.md').read_text()
    assert '| layer_norm | _ln_bwd_kernel | 1 |' in md and "launch {'norm_bwd'" in md
