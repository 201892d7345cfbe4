# Family base: IsotropicBackbone-S (DeiT-small sizes: 384 wide, 12 blocks, 6 heads) with GSA token mixers.
_base_ = ['./gsa-t.py']
backbone = dict(arch='small')
