# The default job: a tiny linear-attention ViT on the bundled synthetic shapes (32x32, 6 classes).
# Trains in about 2 minutes on 2 CPU cores; generates data/shapes/cls on first use.
_base_ = [
    '../_base_/models/linear_vit_cls.py',
    '../_base_/datasets/shapes_cls.py',
    '../_base_/schedules/shapes_cls.py',
    '../_base_/default_runtime.py',
]
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=96, num_layers=4, num_heads=3, mlp_ratio=2.0), img_size=32,
                  patch_size=4, drop_path_rate=0.0),
    head=dict(num_classes=6, in_channels=96, loss=dict(_delete_=True, type='CrossEntropyLoss', loss_weight=1.0)),
)
default_hooks = dict(logger=dict(interval=20))
