# Family base: IsotropicBackbone-B (DeiT-base sizes: 768 wide, 12 blocks, 12 heads) with softmax attention token mixers.
_base_ = ['./transformer-t.py']
backbone = dict(arch='base')
