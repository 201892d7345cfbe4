# Family base: IsotropicBackbone-S (DeiT-small sizes: 384 wide, 12 blocks, 6 heads) with DeltaNet token mixers.
_base_ = ['./deltanet-t.py']
backbone = dict(arch='small')
