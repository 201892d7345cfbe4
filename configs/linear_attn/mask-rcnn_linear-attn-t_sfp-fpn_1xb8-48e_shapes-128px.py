# Mask R-CNN + a linear-attention IsotropicBackbone (192-dim, 8 blocks, conv stem to stride 4: a 32x32 token grid,
# LePE) + SimpleFeaturePyramid + FPN on the synthetic shapes (128x128, 6 classes, COCO layout, bbox + segm AP).
# Anchors and RoI settings scaled to the small images.
_base_ = [
    '../_base_/models/isotropic/linear-attn-t.py',
    '../_base_/models/mask-rcnn_isotropic_sfp-fpn.py',
    '../_base_/datasets/shapes_det.py',
    '../_base_/schedules/shapes_det.py',
    '../_base_/default_runtime_det.py',
]
model = dict(
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    # conv stem + LePE: a plain patchify linear-attention ViT does not learn shape identity on these data
    # (docs/results.md: 22% vs 52-99% top-1), and Mask R-CNN's RoI heads then never learn (docs/pipelines.md)
    backbone=dict(_base_.backbone, arch=dict(embed_dims=192, num_layers=8, num_heads=3, mlp_ratio=4.0),
                  img_size=128, patch_size=4, out_indices=(1, 3, 5, 7), drop_path_rate=0.05,
                  stem=dict(type='conv', convs_per_stage=2), mixer=dict(_base_.backbone.mixer, lepe=True)),
    neck=[
        dict(type='vla_mm.SimpleFeaturePyramid', in_channels=192, out_channels=128, patch_size=4,
             out_strides=(4, 8, 16, 32), norm='LN'),
        dict(type='FPN', in_channels=[128, 128, 128, 128], out_channels=128, num_outs=5),
    ],
    rpn_head=dict(in_channels=128, feat_channels=128,
                  # shapes are 8-40 px: anchors of 16..256 px at strides 4..64 (scale 4)
                  anchor_generator=dict(scales=[4], ratios=[0.5, 1.0, 2.0], strides=[4, 8, 16, 32, 64])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=128, finest_scale=28),
        bbox_head=dict(in_channels=128, fc_out_channels=256, num_classes=6),
        mask_roi_extractor=dict(out_channels=128, finest_scale=28),
        mask_head=dict(in_channels=128, conv_out_channels=128, num_classes=6),
    ),
    train_cfg=dict(rpn=dict(sampler=dict(num=128)),
                   rpn_proposal=dict(nms_pre=1000, max_per_img=300),
                   rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=100),
                  rcnn=dict(max_per_img=30)),
)
default_hooks = dict(logger=dict(interval=20))
