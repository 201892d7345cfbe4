# MAE pre-training of the shapes model (96-dim, 4 blocks, patch 4, 32x32 images): 75% of the 64 patch tokens
# dropped (the encoder runs on 16 tokens), 2-block decoder, L2 on normalized pixels.
_base_ = [
    '../_base_/models/isotropic/linear-attn-t.py',
    '../_base_/models/mae_isotropic.py',
    '../_base_/datasets/shapes_mim.py',
    '../_base_/schedules/shapes_mim.py',
    '../_base_/default_runtime.py',
]
model = dict(
    backbone=dict(_base_.backbone, type='vla_mm.IsotropicMAE',
                  arch=dict(embed_dims=96, num_layers=4, num_heads=3, mlp_ratio=2.0), img_size=32, patch_size=4),
    neck=dict(num_patches=64, patch_size=4, embed_dim=96, decoder_embed_dim=64, decoder_depth=2,
              decoder_num_heads=4),
    head=dict(patch_size=4),
)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
default_hooks = dict(logger=dict(interval=20),
                     checkpoint=dict(interval=10, max_keep_ckpts=1, save_best=None))
