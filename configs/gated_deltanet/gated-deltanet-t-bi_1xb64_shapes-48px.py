# gated-deltanet-t_1xb64_shapes-48px.py with the 'bi' route (row-major forward + reversed, summed) in every block.
_base_ = ['./gated-deltanet-t_1xb64_shapes-48px.py']
model = dict(backbone=dict(scan=dict(type='bi')))
