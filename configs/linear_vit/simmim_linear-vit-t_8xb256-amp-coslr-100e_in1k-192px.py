# Old name of ../linear_attn/simmim_linear-attn-t_8xb256-amp-coslr-100e_in1k-192px.py
# (the same job, written to work_dirs/<this name>).
_base_ = ['../linear_attn/simmim_linear-attn-t_8xb256-amp-coslr-100e_in1k-192px.py']
