# Family base: IsotropicBackbone-B (DeiT-base sizes: 768 wide, 12 blocks, 12 heads), non-causal linear attention.
_base_ = ['./linear-attn-t.py']
backbone = dict(arch='base')
