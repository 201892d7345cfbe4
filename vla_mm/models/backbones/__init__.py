from .linear_vit import LinearViT

__all__ = ['LinearViT']
