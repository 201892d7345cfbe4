# Family base: IsotropicBackbone-B (DeiT-base sizes: 768 wide, 12 blocks, 12 heads) with BitNet token mixers.
_base_ = ['./bitnet-t.py']
backbone = dict(arch='base')
