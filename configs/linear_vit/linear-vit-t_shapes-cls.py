# Old name of ../linear_attn/linear-attn-t_1xb64_shapes-48px.py
# (the same job, written to work_dirs/<this name>).
_base_ = ['../linear_attn/linear-attn-t_1xb64_shapes-48px.py']
