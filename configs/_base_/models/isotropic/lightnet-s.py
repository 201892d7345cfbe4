# Family base: IsotropicBackbone-S (DeiT-small sizes: 384 wide, 12 blocks, 6 heads) with LightNet token mixers.
_base_ = ['./lightnet-t.py']
backbone = dict(arch='small')
