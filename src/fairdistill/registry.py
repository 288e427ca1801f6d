"""Name -> class registries for backends, benchmarks and methods.

Adding a benchmark or method is one file with one decorated class; the CLI discovers it by name.
"""
from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, modules: list[str]):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._modules = modules  # imported lazily so `fairdistill list` stays fast
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            setattr(obj, "registry_name", name)
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self._modules:
            try:
                importlib.import_module(mod)
            except ModuleNotFoundError as e:
                if e.name != mod:  # only a module not present at all is skipped
                    raise

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise UserError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._items.items())


BENCHMARKS: Registry = Registry(
    "benchmark",
    [
        "fairdistill.benchmarks.bbq",
        "fairdistill.benchmarks.holistic_bias",
        "fairdistill.benchmarks.bscore",
        "fairdistill.benchmarks.occupation",
        "fairdistill.benchmarks.crows_pairs",
        "fairdistill.benchmarks.stereoset",
        "fairdistill.benchmarks.capability",
    ],
)
METHODS: Registry = Registry("method", ["fairdistill.methods"])
BACKENDS: Registry = Registry(
    "backend",
    [
        "fairdistill.backends.hf",
        "fairdistill.backends.openai",
        "fairdistill.backends.vllm",
    ],
)

