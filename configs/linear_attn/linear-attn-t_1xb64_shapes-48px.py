# The default job: a tiny non-causal linear-attention ViT on the bundled synthetic shapes (48x48, 6 classes).
# Conv stem (2 convs per stride-2 stage) -> 6x6 tokens of 96 channels -> 4 blocks of linear attention with a
# depthwise-conv (LePE) branch -> mean pooling -> linear head. 942 iterations: about 2.5 minutes on 2 CPU cores.
# Generates data/shapes/cls on first use. Another mixer: its family base in place of linear-attn-t.py (and the
# mixer line below dropped).
_base_ = [
    '../_base_/models/isotropic/linear-attn-t.py',
    '../_base_/models/isotropic_cls.py',
    '../_base_/datasets/shapes_cls.py',
    '../_base_/schedules/shapes_cls.py',
    '../_base_/default_runtime.py',
]
model = dict(
    backbone=dict(
        _base_.backbone,
        arch=dict(embed_dims=96, num_layers=4, num_heads=3, mlp_ratio=2.0),
        img_size=48,
        patch_size=8,
        stem=dict(type='conv', convs_per_stage=2),
        mixer=dict(_base_.backbone.mixer, lepe=True),
        drop_path_rate=0.0),
    head=dict(num_classes=6, in_channels=96, loss=dict(_delete_=True, type='CrossEntropyLoss', loss_weight=1.0)),
)
optim_wrapper = dict(optimizer=dict(lr=3e-3))
train_cfg = dict(max_epochs=6)
default_hooks = dict(logger=dict(interval=20))
