# UperNet + the non-causal linear-attention IsotropicBackbone-T (DeiT-tiny size, patch 16) on ADE20K 512x512,
# 4 GPUs x 4 images, 160k iterations, slide inference. Backbone initialised from the ImageNet classification
# checkpoint (pos_embed resized 14->32).
_base_ = [
    '../_base_/models/isotropic/linear-attn-t.py',
    '../_base_/models/upernet_isotropic.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k_adamw.py',
    '../_base_/default_runtime_seg.py',
]
pretrained = 'work_dirs/linear-attn-t_8xb128_in1k/epoch_300.pth'
model = dict(
    data_preprocessor=dict(size=(512, 512)),
    backbone=dict(_base_.backbone, img_size=512,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)),
)
train_dataloader = dict(batch_size=4)
