# IsotropicBackbone-T with GSA token mixers (DeiT-tiny layout) on ImageNet-1K, DeiT recipe, 8 GPUs x 128.
_base_ = [
    '../_base_/models/isotropic/gsa-t.py',
    '../_base_/models/isotropic_cls.py',
    '../_base_/datasets/imagenet_bs64_swin_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw.py',
    '../_base_/default_runtime.py',
]
model = dict(
    backbone=_base_.backbone,
    head=dict(in_channels=192),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]),
)
train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader
