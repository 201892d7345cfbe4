# Task base: UperNet (mmseg EncoderDecoder + UPerHead + FCNHead auxiliary) on an isotropic backbone: four block
# taps re-scaled to strides 4/8/16/32 by vla_mm's SimpleFeaturePyramid. Backbone from a family base:
#   model = dict(backbone=_base_.backbone)   (then neck.in_channels = the backbone's width)
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 512),
)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(img_size=512, patch_size=16, out_indices=(3, 5, 7, 11), final_norm=True, drop_path_rate=0.1),
    neck=dict(type='vla_mm.SimpleFeaturePyramid', in_channels=192, out_channels=192, patch_size=16,
              out_strides=(4, 8, 16, 32), norm='LN'),
    decode_head=dict(
        type='UPerHead',
        in_channels=[192, 192, 192, 192],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=192,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)
