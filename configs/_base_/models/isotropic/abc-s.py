# Family base: IsotropicBackbone-S (DeiT-small sizes: 384 wide, 12 blocks, 6 heads) with ABC token mixers.
_base_ = ['./abc-t.py']
backbone = dict(arch='small')
