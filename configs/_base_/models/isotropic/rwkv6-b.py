# Family base: IsotropicBackbone-B (DeiT-base sizes: 768 wide, 12 blocks, 12 heads) with RWKV6 token mixers.
_base_ = ['./rwkv6-t.py']
backbone = dict(arch='base')
