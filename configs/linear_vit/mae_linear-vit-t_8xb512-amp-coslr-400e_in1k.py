# Old name of ../linear_attn/mae_linear-attn-t_8xb512-amp-coslr-400e_in1k.py
# (the same job, written to work_dirs/<this name>).
_base_ = ['../linear_attn/mae_linear-attn-t_8xb512-amp-coslr-400e_in1k.py']
