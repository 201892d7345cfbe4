# Mask R-CNN + the non-causal linear-attention IsotropicBackbone-T (DeiT-tiny size, patch 16) + SimpleFeaturePyramid
# + FPN on COCO 2017, 1x schedule, ~1333x800 inputs. Backbone initialised from the ImageNet classification
# checkpoint (pos_embed resized).
_base_ = [
    '../_base_/models/isotropic/linear-attn-t.py',
    '../_base_/models/mask-rcnn_isotropic_sfp-fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x_adamw.py',
    '../_base_/default_runtime_det.py',
]
pretrained = 'work_dirs/linear-attn-t_8xb128_in1k/epoch_300.pth'
model = dict(
    backbone=dict(_base_.backbone, init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    roi_head=dict(bbox_head=dict(num_classes=80), mask_head=dict(num_classes=80)),
)
