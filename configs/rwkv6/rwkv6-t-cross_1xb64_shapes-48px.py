# rwkv6-t_1xb64_shapes-48px.py with the 'cross' route (row- and column-major, each forward and reversed: 4 passes,
# summed) in every block.
_base_ = ['./rwkv6-t_1xb64_shapes-48px.py']
model = dict(backbone=dict(scan=dict(type='cross')))
