# Old name of ../linear_attn/mask-rcnn_linear-attn-t_sfp-fpn_1xb8-48e_shapes-128px_cls-pre.py
# (the same job, written to work_dirs/<this name>, started from the checkpoint the old-named pre-training run wrote).
_base_ = ['../linear_attn/mask-rcnn_linear-attn-t_sfp-fpn_1xb8-48e_shapes-128px_cls-pre.py']
pretrained = 'work_dirs/linear-vit-t-p4_shapes-cls/epoch_20.pth'
model = dict(backbone=dict(init_cfg=dict(checkpoint=pretrained)))
