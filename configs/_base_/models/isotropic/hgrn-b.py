# Family base: IsotropicBackbone-B (DeiT-base sizes: 768 wide, 12 blocks, 12 heads) with HGRN token mixers.
_base_ = ['./hgrn-t.py']
backbone = dict(arch='base')
