# Old name of ../linear_attn/mae_linear-attn-t_1xb64-40e_shapes-32px.py
# (the same job, written to work_dirs/<this name>).
_base_ = ['../linear_attn/mae_linear-attn-t_1xb64-40e_shapes-32px.py']
