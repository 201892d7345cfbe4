# Hybrid: softmax attention in blocks 1 and 3 of 4 (every other, as FLA-vision's hybrids; docs/models.md).
_base_ = ['./linear-attn-t_1xb64_shapes-48px.py']
model = dict(backbone=dict(attn_layers=(1, 3)))
