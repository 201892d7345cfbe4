# Old name of ../linear_attn/linear-attn-t_8xb128_in1k.py
# (the same job, written to work_dirs/<this name>).
_base_ = ['../linear_attn/linear-attn-t_8xb128_in1k.py']
