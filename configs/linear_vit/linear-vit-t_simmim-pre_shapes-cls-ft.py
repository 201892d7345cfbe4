# Old name of ../linear_attn/linear-attn-t_simmim-pre_1xb64_shapes-32px.py
# (the same job, written to work_dirs/<this name>, started from the checkpoint the old-named pre-training run wrote).
_base_ = ['../linear_attn/linear-attn-t_simmim-pre_1xb64_shapes-32px.py']
pretrained = 'work_dirs/simmim_linear-vit-t_shapes/epoch_40.pth'
model = dict(backbone=dict(init_cfg=dict(checkpoint=pretrained)))
