# Old name of mae_isotropic.py with the isotropic/linear-attn-t.py backbone (kept for configs that inherit it).
_base_ = ['./isotropic/linear-attn-t.py', './mae_isotropic.py']
model = dict(backbone=dict(_base_.backbone, type='vla_mm.IsotropicMAE'))
