# Old name of upernet_isotropic.py with the isotropic/linear-attn-t.py backbone (kept for configs that inherit it).
_base_ = ['./isotropic/linear-attn-t.py', './upernet_isotropic.py']
model = dict(backbone=_base_.backbone)
