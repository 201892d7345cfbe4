# Old name of mask-rcnn_isotropic_sfp-fpn.py with the isotropic/linear-attn-t.py backbone (kept for configs that
# inherit it).
_base_ = ['./isotropic/linear-attn-t.py', './mask-rcnn_isotropic_sfp-fpn.py']
model = dict(backbone=_base_.backbone)
