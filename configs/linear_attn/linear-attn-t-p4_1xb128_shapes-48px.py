# Classification pre-training of the Mask R-CNN backbone (192-d x 8 blocks, conv stem to stride 4, LePE: the
# backbone of mask-rcnn_linear-attn-t_sfp-fpn_1xb8-48e_shapes-128px.py) on the synthetic shapes classification
# data (48 px, one shape per image on a cluttered background): the default job's recipe and stem/mixer, at the
# detector's width, depth and patch size. Plays the part ImageNet pre-training plays for the real configs:
# mask-rcnn_linear-attn-t_sfp-fpn_1xb8-48e_shapes-128px_cls-pre.py starts from it (the 12x12 position embedding
# is resized to the 32x32 grid of 128 px scenes on load).
_base_ = ['./linear-attn-t_1xb64_shapes-48px.py']
model = dict(
    backbone=dict(arch=dict(_delete_=True, embed_dims=192, num_layers=8, num_heads=3, mlp_ratio=4.0),
                  patch_size=4, drop_path_rate=0.05),
    head=dict(in_channels=192),
)
train_dataloader = dict(batch_size=128)
optim_wrapper = dict(optimizer=dict(lr=2e-3))
train_cfg = dict(max_epochs=20)
default_hooks = dict(checkpoint=dict(interval=20, max_keep_ckpts=1))
