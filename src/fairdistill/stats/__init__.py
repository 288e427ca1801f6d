"""Statistics helpers (bootstrap confidence intervals)."""
from .bootstrap import bootstrap_ci, resample_indices

__all__ = ["bootstrap_ci", "resample_indices"]
