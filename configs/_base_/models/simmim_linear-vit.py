# Old name of simmim_isotropic.py with the isotropic/linear-attn-t.py backbone (kept for configs that inherit it).
_base_ = ['./isotropic/linear-attn-t.py', './simmim_isotropic.py']
model = dict(backbone=_base_.backbone)
