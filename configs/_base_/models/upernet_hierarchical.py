# Task base: UperNet (mmseg EncoderDecoder + UPerHead + FCNHead auxiliary) on a four-stage backbone, whose stage
# outputs (strides 4/8/16/32) go to the heads as a ResNet's do. Backbone from a family base:
#   model = dict(backbone=_base_.backbone)   (then decode_head.in_channels = the stage widths)
_base_ = ['./upernet_isotropic.py']
model = dict(
    backbone=dict(_delete_=True, img_size=512, out_indices=(0, 1, 2, 3), drop_path_rate=0.1),
    neck=None,
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256),
)
