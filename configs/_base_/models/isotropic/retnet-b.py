# Family base: IsotropicBackbone-B (DeiT-base sizes: 768 wide, 12 blocks, 12 heads) with RetNet token mixers.
_base_ = ['./retnet-t.py']
backbone = dict(arch='base')
