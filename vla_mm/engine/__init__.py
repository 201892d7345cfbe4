"""Runner extensions: hooks registered in the vla_mm scope."""
from .hooks import DeterministicResumeHook, TimeBudgetHook

__all__ = ['DeterministicResumeHook', 'TimeBudgetHook']
