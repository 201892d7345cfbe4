# The default shapes classification job (configs/linear_attn/linear-attn-t_1xb64_shapes-48px.py: 48 px, conv stem, 96
# wide, 4 blocks, 6 epochs) with LightNet token mixers in place of linear attention (and its LePE branch): same stem,
# width, depth, data and schedule; only the mixer changes, and the peak lr: at the default 3e-3 training collapsed
# during the warm-up on the CPU (18.2 % after 6 epochs, as GLA, ABC, HGRN and HGRN2); at 1.5e-3 see docs/results.md,
# "The zoo on the shapes job".
_base_ = ['../linear_attn/linear-attn-t_1xb64_shapes-48px.py']
model = dict(backbone=dict(mixer=dict(_delete_=True, type='lightnet')))
optim_wrapper = dict(optimizer=dict(lr=1.5e-3))
