# IsotropicBackbone-T with RWKV6 token mixers (DeiT-tiny layout) on ImageNet-1K, DeiT recipe, 8 GPUs x 128.
_base_ = ['../_base_/models/isotropic/rwkv6-t.py', '../_base_/isotropic_in1k.py']
model = dict(backbone=_base_.backbone, head=dict(in_channels=192))
