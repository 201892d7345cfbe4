# Mask R-CNN + an IsotropicBackbone with softmax attention token mixers (192 wide, 8 blocks, conv stem to stride 4) +
# SimpleFeaturePyramid + FPN on the synthetic shapes (128 px, 6 classes): configs/linear_attn/mask-rcnn_linear-attn-
# t_sfp-fpn_1xb8-48e_shapes-128px.py, mixer swapped.
_base_ = ['../linear_attn/mask-rcnn_linear-attn-t_sfp-fpn_1xb8-48e_shapes-128px.py']
model = dict(backbone=dict(mixer=dict(_delete_=True, type='transformer')))
