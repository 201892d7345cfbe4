# Family base: IsotropicBackbone-B (DeiT-base sizes: 768 wide, 12 blocks, 12 heads) with LightNet token mixers.
_base_ = ['./lightnet-t.py']
backbone = dict(arch='base')
