"""Regenerate ``old_linear_vit.pth``: state dicts, inputs and outputs of ``LinearViT`` as it was at commit f9fe1d7
(before the block used mmcv's FFN / LayerScale / PatchEmbed), for ``test_backbones.py``'s checkpoint test.

    python tests/test_models/data/make_old_linear_vit.py   # from the repository root, needs git history

The old package is taken with ``git archive f9fe1d7`` into a temporary folder and run in a subprocess that
imports it instead of the installed vla_mm.
"""
import os
import os.path as osp
import subprocess
import sys
import tempfile

COMMIT = 'f9fe1d7'
HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(osp.dirname(osp.dirname(HERE)))

CASES = [
    dict(arch=dict(embed_dims=16, num_layers=2, num_heads=2, mlp_ratio=2.0), img_size=16, patch_size=4,
         mixer=dict(type='linear_attn', feature_map='elu1'), out_indices=(0, 1), layer_scale_init=0.5),
    dict(arch=dict(embed_dims=16, num_layers=2, num_heads=2, mlp_ratio=2.0), img_size=16, patch_size=4,
         stem=dict(type='conv', convs_per_stage=2), mixer=dict(type='linear_attn', feature_map='relu', lepe=True)),
]

RUN = r'''
import sys
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]
sys.path.insert(0, sys.argv[1])
import torch
import vla_mm
from vla_mm.registry import MODELS
assert vla_mm.__file__.startswith(sys.argv[1]), vla_mm.__file__
cases = eval(sys.argv[3])
out = []
for i, kw in enumerate(cases):
    torch.manual_seed(i)
    m = MODELS.build(dict(type='LinearViT', **kw))
    m.init_weights()
    with torch.no_grad():  # every parameter and statistic away from its initial value
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                t.add_(0.1 * torch.randn_like(t)).abs_() if 'running_var' in name else t.add_(0.1 * torch.randn_like(t))
    m.eval()
    x = torch.randn(2, 3, 16, 16)
    mask = (torch.rand(2, 4, 4) > 0.5).float()
    x_other = torch.randn(1, 3, 20, 28)  # another input size: the position embedding is interpolated
    with torch.no_grad():
        out.append(dict(kwargs=kw, state_dict=m.state_dict(), x=x, outs=m(x), mask=mask, outs_mask=m(x, mask),
                        x_other=x_other, outs_other=m(x_other)))
torch.save(dict(commit=sys.argv[4], cases=out), sys.argv[2])
'''


def main():
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(['git', '-C', ROOT, 'archive', COMMIT, 'vla_mm', 'ops'], check=True,
                                 capture_output=True).stdout
        subprocess.run(['tar', '-x', '-C', tmp], input=archive, check=True)
        env = dict(os.environ, VLA_OPS_REFERENCE='1')
        subprocess.run([sys.executable, '-c', RUN, tmp, osp.join(HERE, 'old_linear_vit.pth'), repr(CASES), COMMIT],
                       check=True, env=env, cwd=tmp)


if __name__ == '__main__':
    main()
