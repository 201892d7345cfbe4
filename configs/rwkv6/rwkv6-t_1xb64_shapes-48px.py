# The default shapes classification job (configs/linear_attn/linear-attn-t_1xb64_shapes-48px.py: 48 px, conv stem, 96
# wide, 4 blocks, 6 epochs) with RWKV6 token mixers in place of linear attention (and its LePE branch): same stem,
# width, depth, data and schedule; only the mixer changes, and the peak lr: 1.5e-3 (the default 3e-3 collapses in
# the warm-up; 2e-3 trained on the CPU but collapsed in bf16 on the H200 with the earlier zero initialisation;
# docs/results.md, "The zoo on the shapes job").
_base_ = ['../linear_attn/linear-attn-t_1xb64_shapes-48px.py']
model = dict(backbone=dict(mixer=dict(_delete_=True, type='rwkv6')))
optim_wrapper = dict(optimizer=dict(lr=1.5e-3))
