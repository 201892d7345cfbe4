# SimMIM (mmpretrain): LinearViT with its learned mask token (masks from SimMIMMaskGenerator in the pipeline),
# a linear decoder (1x1 conv + pixel shuffle back to the image) and L1 loss on the masked pixels.
model = dict(
    type='SimMIM',
    backbone=dict(
        type='vla_mm.LinearViT',
        arch='tiny',
        img_size=192,
        patch_size=16,
        mixer=dict(type='linear_attn', feature_map='elu1'),
        out_indices=-1,
        out_type='featmap',
    ),
    neck=dict(type='SimMIMLinearDecoder', in_channels=192, encoder_stride=16),
    head=dict(type='SimMIMHead', patch_size=16, loss=dict(type='PixelReconstructionLoss', criterion='L1', channel=3)),
)
