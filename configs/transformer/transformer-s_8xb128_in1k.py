# IsotropicBackbone-S with softmax attention token mixers (DeiT-small layout) on ImageNet-1K, DeiT recipe, 8 GPUs x
_base_ = ['../_base_/models/isotropic/transformer-s.py', '../_base_/isotropic_in1k.py']
model = dict(backbone=_base_.backbone, head=dict(in_channels=384))
