# Task base: Mask R-CNN (mmdet) on an isotropic backbone: four block taps -> vla_mm SimpleFeaturePyramid (strides
# 4/8/16/32) -> FPN (+ a stride-64 level) -> RPN and RoI heads (mask-rcnn_fpn.py). Backbone from a family base:
#   model = dict(backbone=_base_.backbone)   (then neck[0].in_channels = the backbone's width)
_base_ = ['./mask-rcnn_fpn.py']
model = dict(
    backbone=dict(img_size=1024, patch_size=16, out_indices=(3, 5, 7, 11), drop_path_rate=0.1),
    neck=[
        dict(type='vla_mm.SimpleFeaturePyramid', in_channels=192, out_channels=256, patch_size=16,
             out_strides=(4, 8, 16, 32), norm='LN'),
        dict(type='FPN', in_channels=[256, 256, 256, 256], out_channels=256, num_outs=5),
    ],
)
