# Hybrid SimMIM: softmax attention in blocks 1, 3, ..., 11 of 12 (every other, as FLA-vision's hybrids; docs/models.md).
_base_ = ['./simmim_abc-t_8xb256-amp-coslr-100e_in1k-192px.py']
model = dict(backbone=dict(attn_layers=(1, 3, 5, 7, 9, 11)))
