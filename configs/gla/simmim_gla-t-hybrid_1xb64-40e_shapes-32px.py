# Hybrid SimMIM: softmax attention in blocks 1 and 3 of 4 (every other, as FLA-vision's hybrids; docs/models.md).
_base_ = ['./simmim_gla-t_1xb64-40e_shapes-32px.py']
model = dict(backbone=dict(attn_layers=(1, 3)))
