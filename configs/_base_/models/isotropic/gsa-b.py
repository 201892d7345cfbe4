# Family base: IsotropicBackbone-B (DeiT-base sizes: 768 wide, 12 blocks, 12 heads) with GSA token mixers.
_base_ = ['./gsa-t.py']
backbone = dict(arch='base')
