# Family base: IsotropicBackbone-B (DeiT-base sizes: 768 wide, 12 blocks, 12 heads) with GLA token mixers.
_base_ = ['./gla-t.py']
backbone = dict(arch='base')
