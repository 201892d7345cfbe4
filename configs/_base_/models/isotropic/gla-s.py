# Family base: IsotropicBackbone-S (DeiT-small sizes: 384 wide, 12 blocks, 6 heads) with GLA token mixers.
_base_ = ['./gla-t.py']
backbone = dict(arch='small')
