# UperNet + IsotropicBackbone-T with HGRN2 token mixers on ADE20K 512x512, 4 GPUs x 4, 160k iterations:
# configs/linear_attn/upernet_linear-attn-t_4xb4-160k_ade20k-512x512.py, mixer swapped; the backbone starts from
# hgrn2-t_8xb128_in1k.py (pos_embed resized).
_base_ = ['../linear_attn/upernet_linear-attn-t_4xb4-160k_ade20k-512x512.py']
pretrained = 'work_dirs/hgrn2-t_8xb128_in1k/epoch_300.pth'
model = dict(backbone=dict(mixer=dict(_delete_=True, type='hgrn2', num_layers=12),
                           init_cfg=dict(checkpoint=pretrained)))
