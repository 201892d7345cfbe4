# The default shapes classification job (configs/linear_attn/linear-attn-t_1xb64_shapes-48px.py: 48 px, conv stem, 96
# wide, 4 blocks, 6 epochs) with RWKV6 token mixers in place of linear attention (and its LePE branch): same stem,
# width, depth, data and schedule; only the mixer changes, and the peak lr: at the default 3e-3 training collapsed
# during the warm-up on the CPU (a gradient spike of 12) and recovered to 81.7 % after 6 epochs; 1.5e-3 trained
# without a collapse but slowly (80.2 % after 5 epochs); 2e-3 reached 98.2 % (docs/results.md, "The zoo on the
# shapes job").
_base_ = ['../linear_attn/linear-attn-t_1xb64_shapes-48px.py']
model = dict(backbone=dict(mixer=dict(_delete_=True, type='rwkv6')))
optim_wrapper = dict(optimizer=dict(lr=2e-3))
