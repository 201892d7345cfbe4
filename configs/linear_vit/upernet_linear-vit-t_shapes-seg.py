# Old name of ../linear_attn/upernet_linear-attn-t_1xb8-4k_shapes-128x128.py
# (the same job, written to work_dirs/<this name>).
_base_ = ['../linear_attn/upernet_linear-attn-t_1xb8-4k_shapes-128x128.py']
