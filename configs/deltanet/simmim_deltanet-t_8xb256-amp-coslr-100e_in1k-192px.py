# SimMIM pre-training of IsotropicBackbone-T with DeltaNet token mixers on ImageNet-1k (192 px, 100 epochs, 8 GPUs x
# 256, AMP): configs/linear_attn/simmim_linear-attn-t_8xb256-amp-coslr-100e_in1k-192px.py, mixer swapped.
_base_ = ['../linear_attn/simmim_linear-attn-t_8xb256-amp-coslr-100e_in1k-192px.py']
model = dict(backbone=dict(mixer=dict(_delete_=True, type='deltanet')))
