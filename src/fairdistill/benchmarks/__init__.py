"""Bias benchmarks. Each module registers one benchmark by name in ``BENCHMARKS``."""
from .base import Benchmark, EvalContext

__all__ = ["Benchmark", "EvalContext"]
