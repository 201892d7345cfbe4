# Task base: an isotropic backbone classified on ImageNet-1K with the DeiT recipe (Mixup + CutMix, AdamW,
# 8 GPUs x 128). A config adds its family base (models/isotropic/<mixer>-<size>.py) and
#   model = dict(backbone=_base_.backbone, head=dict(in_channels=<width>))
_base_ = [
    './models/isotropic_cls.py',
    './datasets/imagenet_bs64_swin_224.py',
    './schedules/imagenet_bs1024_adamw.py',
    './default_runtime.py',
]
model = dict(train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)]))
train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader
