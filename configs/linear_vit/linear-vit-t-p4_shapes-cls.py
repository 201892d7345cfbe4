# Classification pre-training of the Mask R-CNN backbone (LinearViT 192-d x 8 blocks, conv stem to stride 4, LePE:
# the backbone of mask-rcnn_linear-vit-t_fpn_shapes-det.py) on the synthetic shapes
# classification data (48 px, one shape per image on a cluttered background). Plays the part ImageNet
# pre-training plays for the real configs: mask-rcnn_linear-vit-t_fpn_shapes-det_cls-pre.py starts from it
# (the 12x12 position embedding is resized to the 32x32 grid of 128 px scenes on load).
_base_ = [
    '../_base_/models/linear_vit_cls.py',
    '../_base_/datasets/shapes_cls.py',
    '../_base_/schedules/shapes_cls.py',
    '../_base_/default_runtime.py',
]
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=192, num_layers=8, num_heads=3, mlp_ratio=4.0),
                  img_size=48, patch_size=4, drop_path_rate=0.05, stem=dict(type='conv', convs_per_stage=2),
                  mixer=dict(type='linear_attn', feature_map='elu1', lepe=True)),
    head=dict(num_classes=6, in_channels=192, loss=dict(_delete_=True, type='CrossEntropyLoss', loss_weight=1.0)),
)
train_dataloader = dict(batch_size=128)
optim_wrapper = dict(optimizer=dict(lr=2e-3))
train_cfg = dict(max_epochs=20)
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=20, max_keep_ckpts=1))
