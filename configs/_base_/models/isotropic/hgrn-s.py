# Family base: IsotropicBackbone-S (DeiT-small sizes: 384 wide, 12 blocks, 6 heads) with HGRN token mixers.
_base_ = ['./hgrn-t.py']
backbone = dict(arch='small')
