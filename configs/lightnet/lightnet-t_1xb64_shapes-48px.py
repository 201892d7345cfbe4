# The default shapes classification job (configs/linear_attn/linear-attn-t_1xb64_shapes-48px.py: 48 px, conv stem, 96
# wide, 4 blocks, 6 epochs) with LightNet token mixers in place of linear attention (and its LePE branch): same stem,
# width, depth, data and schedule; only the mixer changes.
_base_ = ['../linear_attn/linear-attn-t_1xb64_shapes-48px.py']
model = dict(backbone=dict(mixer=dict(_delete_=True, type='lightnet')))
