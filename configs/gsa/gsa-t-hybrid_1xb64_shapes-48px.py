# Hybrid: gsa-t_1xb64_shapes-48px.py with softmax attention in every other block (blocks 1 and 3 of 4;
# GSA in blocks 0 and 2).
_base_ = ['./gsa-t_1xb64_shapes-48px.py']
model = dict(backbone=dict(attn_layers=(1, 3)))
