# Old name of ../linear_attn/upernet_linear-attn-t_4xb4-160k_ade20k-512x512.py
# (the same job, written to work_dirs/<this name>, started from the checkpoint the old-named pre-training run wrote).
_base_ = ['../linear_attn/upernet_linear-attn-t_4xb4-160k_ade20k-512x512.py']
pretrained = 'work_dirs/linear-vit-t_8xb128_in1k/epoch_300.pth'
model = dict(backbone=dict(init_cfg=dict(checkpoint=pretrained)))
