# SimMIM pre-training of the shapes model (96-dim, 4 blocks, patch 4, 32x32 images): 8x8-pixel mask patches,
# 60% masked, L1 on masked pixels. Fine-tune with linear-attn-t_simmim-pre_1xb64_shapes-32px.py.
_base_ = [
    '../_base_/models/isotropic/linear-attn-t.py',
    '../_base_/models/simmim_isotropic.py',
    '../_base_/datasets/shapes_mim.py',
    '../_base_/schedules/shapes_mim.py',
    '../_base_/default_runtime.py',
]
model = dict(
    backbone=dict(_base_.backbone, arch=dict(embed_dims=96, num_layers=4, num_heads=3, mlp_ratio=2.0), img_size=32,
                  patch_size=4),
    neck=dict(in_channels=96, encoder_stride=4),
    head=dict(patch_size=4),
)
default_hooks = dict(logger=dict(interval=20),
                     checkpoint=dict(interval=10, max_keep_ckpts=1, save_best=None))
