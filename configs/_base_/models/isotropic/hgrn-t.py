# Family base: IsotropicBackbone-T (DeiT-tiny sizes: 192 wide, 12 blocks, 3 heads) with HGRN token mixers, the
# published layer's options as the mixer's defaults (num_layers: the depth its lower bound grows over). It names the
# backbone only; a config joins it to a task base with model = dict(backbone=_base_.backbone).
backbone = dict(type='vla_mm.IsotropicBackbone', arch='tiny', mixer=dict(type='hgrn', num_layers=12))
