# UperNet + a linear-attention IsotropicBackbone (192-dim, 8 blocks, patch 4: a 32x32 token grid) on the
# synthetic shapes segmentation (128x128, 7 classes with background). Minutes on one GPU. To start from a
# classification (or SimMIM/MAE) checkpoint, inherit this config and set
#   model.backbone.init_cfg=dict(type='Pretrained', checkpoint=PATH, prefix='backbone.')
# the backbone's pos_embed is resized to this input size on load.
_base_ = [
    '../_base_/models/isotropic/linear-attn-t.py',
    '../_base_/models/upernet_isotropic.py',
    '../_base_/datasets/shapes_seg.py',
    '../_base_/schedules/shapes_seg.py',
    '../_base_/default_runtime_seg.py',
]
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5], size=(128, 128)),
    backbone=dict(_base_.backbone, arch=dict(embed_dims=192, num_layers=8, num_heads=3, mlp_ratio=4.0),
                  img_size=128, patch_size=4, out_indices=(1, 3, 5, 7), drop_path_rate=0.05),
    neck=dict(in_channels=192, out_channels=128, patch_size=4),
    decode_head=dict(in_channels=[128, 128, 128, 128], channels=128, num_classes=7, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=128, channels=64, num_classes=7, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'),
)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=1000, max_keep_ckpts=2))
