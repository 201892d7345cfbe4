# Hybrid: softmax attention in blocks 1, 3, ..., 11 of 12 (every other, as FLA-vision's hybrids; docs/models.md).
_base_ = ['./hgrn-t_8xb128_in1k.py']
model = dict(backbone=dict(attn_layers=(1, 3, 5, 7, 9, 11)))
