# IsotropicBackbone-B with non-causal linear attention (DeiT-base layout) on ImageNet-1K, DeiT recipe, 8 GPUs x 128.
_base_ = ['./linear-attn-t_8xb128_in1k.py']
model = dict(backbone=dict(arch='base'), head=dict(in_channels=768))
