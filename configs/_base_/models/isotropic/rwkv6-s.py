# Family base: IsotropicBackbone-S (DeiT-small sizes: 384 wide, 12 blocks, 6 heads) with RWKV6 token mixers.
_base_ = ['./rwkv6-t.py']
backbone = dict(arch='small')
