# Fine-tuning the SimMIM-pre-trained shapes model (simmim_linear-attn-t_1xb64-40e_shapes-32px.py) on shapes
# classification with layer-wise lr decay, in the low-label regime (the first 600 of the 3000 training images).
# The scratch baseline is the same config with
#   --cfg-options model.backbone.init_cfg=None
# A MAE checkpoint loads the same way (IsotropicMAE and IsotropicBackbone have the same parameters).
_base_ = [
    '../_base_/models/isotropic/linear-attn-t.py',
    '../_base_/models/isotropic_cls.py',
    '../_base_/datasets/shapes_cls.py',
    '../_base_/schedules/shapes_finetune.py',
    '../_base_/default_runtime.py',
]
pretrained = 'work_dirs/simmim_linear-attn-t_1xb64-40e_shapes-32px/epoch_40.pth'
model = dict(
    backbone=dict(_base_.backbone, arch=dict(embed_dims=96, num_layers=4, num_heads=3, mlp_ratio=2.0), img_size=32,
                  patch_size=4, drop_path_rate=0.0,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    head=dict(num_classes=6, in_channels=96, loss=dict(_delete_=True, type='CrossEntropyLoss', loss_weight=1.0)),
)
train_dataloader = dict(dataset=dict(indices=600))
train_cfg = dict(max_epochs=30)
default_hooks = dict(logger=dict(interval=10))
