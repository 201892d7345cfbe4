# mask-rcnn_linear-attn-t_sfp-fpn_1xb8-48e_shapes-128px.py with the backbone initialised from its classification
# pre-training on the shapes data (linear-attn-t-p4_1xb128_shapes-48px.py; run that first), as the real Mask R-CNN
# configs start from ImageNet weights. The loader reports missing / unexpected keys and resizes the position
# embedding.
_base_ = ['./mask-rcnn_linear-attn-t_sfp-fpn_1xb8-48e_shapes-128px.py']
pretrained = 'work_dirs/linear-attn-t-p4_1xb128_shapes-48px/epoch_20.pth'
model = dict(backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')))
