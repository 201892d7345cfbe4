# IsotropicBackbone-S with non-causal linear attention (DeiT-small layout) on ImageNet-1K, DeiT recipe, 8 GPUs x 128.
_base_ = ['./linear-attn-t_8xb128_in1k.py']
model = dict(backbone=dict(arch='small'), head=dict(in_channels=384))
