# Family base: IsotropicBackbone-T (DeiT-tiny sizes: 192 wide, 12 blocks, 3 heads) with non-causal linear
# attention (elu+1 feature map). It names the backbone only (type, size, mixer); a config joins it to a task base
# (../isotropic_cls.py, ../upernet_isotropic.py, ...) with
#   model = dict(backbone=_base_.backbone)
backbone = dict(type='vla_mm.IsotropicBackbone', arch='tiny', mixer=dict(type='linear_attn', feature_map='elu1'))
