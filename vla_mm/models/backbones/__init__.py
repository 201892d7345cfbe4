from .linear_vit import LinearViT
from .linear_vit_mae import LinearViTMAE

__all__ = ['LinearViT', 'LinearViTMAE']
