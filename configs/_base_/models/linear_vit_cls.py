# Old name of isotropic_cls.py with the isotropic/linear-attn-t.py backbone (kept for configs that inherit it).
_base_ = ['./isotropic/linear-attn-t.py', './isotropic_cls.py']
model = dict(backbone=_base_.backbone)
