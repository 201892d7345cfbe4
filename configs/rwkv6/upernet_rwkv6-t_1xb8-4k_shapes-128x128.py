# UperNet + an IsotropicBackbone with RWKV6 token mixers (192 wide, 8 blocks, patch 4) on the synthetic shapes
# segmentation (128 px, 7 classes): configs/linear_attn/upernet_linear-attn-t_1xb8-4k_shapes-128x128.py, mixer
# swapped.
_base_ = ['../linear_attn/upernet_linear-attn-t_1xb8-4k_shapes-128x128.py']
model = dict(backbone=dict(mixer=dict(_delete_=True, type='rwkv6')))
