# Family base: IsotropicBackbone-S (DeiT-small sizes: 384 wide, 12 blocks, 6 heads), non-causal linear attention.
_base_ = ['./linear-attn-t.py']
backbone = dict(arch='small')
