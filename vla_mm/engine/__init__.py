"""Runner extensions: hooks registered in the vla_mm scope."""
from .hooks import DeterministicResumeHook

__all__ = ['DeterministicResumeHook']
