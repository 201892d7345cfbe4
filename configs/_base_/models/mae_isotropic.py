# Task base: MAE (mmpretrain) on an isotropic backbone: vla_mm.IsotropicMAE drops a random 75% of the patch tokens
# (the mixers see the kept tokens' grid positions in their context), mmpretrain's MAE decoder fills in mask tokens,
# L2 loss on per-patch normalized pixels of the masked patches. Backbone from a family base, with the MAE type:
#   model = dict(backbone=dict(_base_.backbone, type='vla_mm.IsotropicMAE'))
model = dict(
    type='MAE',
    backbone=dict(img_size=224, patch_size=16, mask_ratio=0.75),
    neck=dict(type='MAEPretrainDecoder', num_patches=196, patch_size=16, in_chans=3, embed_dim=192,
              decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4, mlp_ratio=4.0),
    head=dict(type='MAEPretrainHead', norm_pix=True, patch_size=16,
              loss=dict(type='PixelReconstructionLoss', criterion='L2')),
    init_cfg=[
        dict(type='Xavier', layer='Linear', distribution='uniform'),
        dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0),
    ],
)
