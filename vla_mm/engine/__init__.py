"""Runner extensions: hooks registered in the vla_mm scope."""
from .hooks import RNGStateHook

__all__ = ['RNGStateHook']
