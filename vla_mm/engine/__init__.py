"""Runner extensions: hooks registered in the vla_mm scope."""
from .hooks import DeterministicResumeHook, GlobalMeanLogHook, TimeBudgetHook

__all__ = ['DeterministicResumeHook', 'GlobalMeanLogHook', 'TimeBudgetHook']
