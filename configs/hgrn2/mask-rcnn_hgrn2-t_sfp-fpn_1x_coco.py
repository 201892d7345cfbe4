# Mask R-CNN + IsotropicBackbone-T with HGRN2 token mixers + SimpleFeaturePyramid + FPN on COCO 2017, 1x:
# configs/linear_attn/mask-rcnn_linear-attn-t_sfp-fpn_1x_coco.py, mixer swapped; the backbone starts from
# hgrn2-t_8xb128_in1k.py (pos_embed resized).
_base_ = ['../linear_attn/mask-rcnn_linear-attn-t_sfp-fpn_1x_coco.py']
pretrained = 'work_dirs/hgrn2-t_8xb128_in1k/epoch_300.pth'
model = dict(backbone=dict(mixer=dict(_delete_=True, type='hgrn2', num_layers=12),
                           init_cfg=dict(checkpoint=pretrained)))
