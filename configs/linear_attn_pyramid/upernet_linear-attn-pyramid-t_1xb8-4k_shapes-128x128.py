# UperNet on the example four-stage linear-attention pyramid (HierarchicalBackbone, LePE) on the synthetic
# shapes segmentation (128x128, 7 classes with background): the four stage outputs (strides 4..32) go straight to
# UPerHead, no neck.
_base_ = [
    '../_base_/models/hierarchical/linear-attn-pyramid-t.py',
    '../_base_/models/upernet_hierarchical.py',
    '../_base_/datasets/shapes_seg.py',
    '../_base_/schedules/shapes_seg.py',
    '../_base_/default_runtime_seg.py',
]
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5], size=(128, 128)),
    backbone=dict(_base_.backbone, img_size=128, drop_path_rate=0.05),
    decode_head=dict(in_channels=[64, 128, 256, 512], channels=128, num_classes=7, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=256, channels=64, num_classes=7, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'),
)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=1000, max_keep_ckpts=2))
