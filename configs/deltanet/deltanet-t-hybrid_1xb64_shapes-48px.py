# Hybrid: deltanet-t_1xb64_shapes-48px.py with softmax attention in every other block (blocks 1 and 3 of 4;
# DeltaNet in blocks 0 and 2).
_base_ = ['./deltanet-t_1xb64_shapes-48px.py']
model = dict(backbone=dict(attn_layers=(1, 3)))
