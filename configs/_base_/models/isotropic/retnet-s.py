# Family base: IsotropicBackbone-S (DeiT-small sizes: 384 wide, 12 blocks, 6 heads) with RetNet token mixers.
_base_ = ['./retnet-t.py']
backbone = dict(arch='small')
