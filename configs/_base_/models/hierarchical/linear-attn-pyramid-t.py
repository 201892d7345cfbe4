# Family base: a four-stage HierarchicalBackbone (64 / 128 / 256 / 512 wide, 2 / 2 / 6 / 2 blocks, 2 / 4 / 8 / 16
# heads, stride-4 stem, overlapping stride-2 downsampling) with non-causal linear attention and its LePE branch
# (the position information of a pyramid without a position embedding). The example pyramid of the base class;
# joined to a task base (../upernet_hierarchical.py, ...) with model = dict(backbone=_base_.backbone).
backbone = dict(type='vla_mm.HierarchicalBackbone', arch='tiny',
                mixer=dict(type='linear_attn', feature_map='elu1', lepe=True))
