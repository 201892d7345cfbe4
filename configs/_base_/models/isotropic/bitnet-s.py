# Family base: IsotropicBackbone-S (DeiT-small sizes: 384 wide, 12 blocks, 6 heads) with BitNet token mixers.
_base_ = ['./bitnet-t.py']
backbone = dict(arch='small')
