"""Inference-time methods: each wraps a backend and turns one question into a conversation.

Each method lives in its own module here and registers itself in ``METHODS``.
"""
from .base import Method, MethodResult, Question, get_method

__all__ = ["Method", "MethodResult", "Question", "get_method"]

import importlib as _importlib
import pkgutil as _pkgutil

for _m in _pkgutil.iter_modules(__path__):
    if _m.name not in ("base",):
        _importlib.import_module(f"{__name__}.{_m.name}")
