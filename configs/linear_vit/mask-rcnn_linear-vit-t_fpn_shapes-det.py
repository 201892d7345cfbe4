# Old name of ../linear_attn/mask-rcnn_linear-attn-t_sfp-fpn_1xb8-48e_shapes-128px.py
# (the same job, written to work_dirs/<this name>).
_base_ = ['../linear_attn/mask-rcnn_linear-attn-t_sfp-fpn_1xb8-48e_shapes-128px.py']
