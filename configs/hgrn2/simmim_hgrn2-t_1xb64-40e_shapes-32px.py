# SimMIM pre-training of the shapes model (96 wide, 4 blocks, patch 4, 32 px; 60% of 8x8-pixel patches masked) with
# HGRN2 token mixers: configs/linear_attn/simmim_linear-attn-t_1xb64-40e_shapes-32px.py, mixer swapped.
_base_ = ['../linear_attn/simmim_linear-attn-t_1xb64-40e_shapes-32px.py']
model = dict(backbone=dict(mixer=dict(_delete_=True, type='hgrn2', num_layers=4)))
