# Task base: SimMIM (mmpretrain) on an isotropic backbone: its learned mask token replaces masked patches (masks
# from SimMIMMaskGenerator in the pipeline), a linear decoder (1x1 conv + pixel shuffle back to the image), L1 loss
# on the masked pixels. Backbone from a family base: model = dict(backbone=_base_.backbone).
model = dict(
    type='SimMIM',
    backbone=dict(img_size=192, patch_size=16, out_indices=-1, out_type='featmap'),
    neck=dict(type='SimMIMLinearDecoder', in_channels=192, encoder_stride=16),
    head=dict(type='SimMIMHead', patch_size=16, loss=dict(type='PixelReconstructionLoss', criterion='L1', channel=3)),
)
