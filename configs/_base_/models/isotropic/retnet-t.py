# Family base: IsotropicBackbone-T (DeiT-tiny sizes: 192 wide, 12 blocks, 3 heads) with RetNet token mixers, the
# published layer's options as the mixer's defaults. It names the backbone only; a config joins it to a task base with
# model = dict(backbone=_base_.backbone).
backbone = dict(type='vla_mm.IsotropicBackbone', arch='tiny', mixer=dict(type='retnet'))
