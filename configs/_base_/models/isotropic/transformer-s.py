# Family base: IsotropicBackbone-S (DeiT-small sizes: 384 wide, 12 blocks, 6 heads) with softmax attention token mixers.
_base_ = ['./transformer-t.py']
backbone = dict(arch='small')
