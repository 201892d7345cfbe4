# Mask R-CNN + IsotropicBackbone-T with softmax attention token mixers + SimpleFeaturePyramid + FPN on COCO 2017, 1x:
# configs/linear_attn/mask-rcnn_linear-attn-t_sfp-fpn_1x_coco.py, mixer swapped; the backbone starts from transformer-
# t_8xb128_in1k.py (pos_embed resized).
_base_ = ['../linear_attn/mask-rcnn_linear-attn-t_sfp-fpn_1x_coco.py']
pretrained = 'work_dirs/transformer-t_8xb128_in1k/epoch_300.pth'
model = dict(backbone=dict(mixer=dict(_delete_=True, type='transformer'),
                           init_cfg=dict(checkpoint=pretrained)))
