# Family base: IsotropicBackbone-B (DeiT-base sizes: 768 wide, 12 blocks, 12 heads) with DeltaNet token mixers.
_base_ = ['./deltanet-t.py']
backbone = dict(arch='base')
