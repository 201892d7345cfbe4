# Task base: Mask R-CNN (mmdet) on a four-stage backbone: stage outputs (strides 4/8/16/32) -> FPN (+ a stride-64
# level) -> RPN and RoI heads (mask-rcnn_fpn.py). Backbone from a family base:
#   model = dict(backbone=_base_.backbone)   (then neck.in_channels = the stage widths)
_base_ = ['./mask-rcnn_fpn.py']
model = dict(
    backbone=dict(img_size=1024, out_indices=(0, 1, 2, 3), drop_path_rate=0.1),
    neck=dict(type='FPN', in_channels=[64, 128, 256, 512], out_channels=256, num_outs=5),
)
