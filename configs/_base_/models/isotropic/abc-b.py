# Family base: IsotropicBackbone-B (DeiT-base sizes: 768 wide, 12 blocks, 12 heads) with ABC token mixers.
_base_ = ['./abc-t.py']
backbone = dict(arch='base')
