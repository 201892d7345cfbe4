# Family base: IsotropicBackbone-S (DeiT-small sizes: 384 wide, 12 blocks, 6 heads) with HGRN2 token mixers.
_base_ = ['./hgrn2-t.py']
backbone = dict(arch='small')
