# Family base: IsotropicBackbone-B (DeiT-base sizes: 768 wide, 12 blocks, 12 heads) with HGRN2 token mixers.
_base_ = ['./hgrn2-t.py']
backbone = dict(arch='base')
