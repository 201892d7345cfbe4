# mask-rcnn_linear-vit-t_fpn_shapes-det.py with the backbone initialised from its classification pre-training
# on the shapes data (linear-vit-t-p4_shapes-cls.py; run that first), as the real Mask R-CNN configs start from
# ImageNet weights. The loader reports missing / unexpected keys and resizes the position embedding.
_base_ = ['./mask-rcnn_linear-vit-t_fpn_shapes-det.py']
pretrained = 'work_dirs/linear-vit-t-p4_shapes-cls/epoch_20.pth'
model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')))
