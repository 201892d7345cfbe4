# Old name of ../linear_attn/mask-rcnn_linear-attn-t_sfp-fpn_1x_coco.py
# (the same job, written to work_dirs/<this name>, started from the checkpoint the old-named pre-training run wrote).
_base_ = ['../linear_attn/mask-rcnn_linear-attn-t_sfp-fpn_1x_coco.py']
pretrained = 'work_dirs/linear-vit-t_8xb128_in1k/epoch_300.pth'
model = dict(backbone=dict(init_cfg=dict(checkpoint=pretrained)))
