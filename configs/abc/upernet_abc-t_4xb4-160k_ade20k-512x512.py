# UperNet + IsotropicBackbone-T with ABC token mixers on ADE20K 512x512, 4 GPUs x 4, 160k iterations:
# configs/linear_attn/upernet_linear-attn-t_4xb4-160k_ade20k-512x512.py, mixer swapped; the backbone starts from abc-
# t_8xb128_in1k.py (pos_embed resized).
_base_ = ['../linear_attn/upernet_linear-attn-t_4xb4-160k_ade20k-512x512.py']
pretrained = 'work_dirs/abc-t_8xb128_in1k/epoch_300.pth'
model = dict(backbone=dict(mixer=dict(_delete_=True, type='abc'),
                           init_cfg=dict(checkpoint=pretrained)))
