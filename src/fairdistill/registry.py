"""Name -> class registries for backends, benchmarks, methods and interventions.

Adding a benchmark, method, intervention or backend is one file with one decorated class, dropped
into its package (``fairdistill/benchmarks/``, ``methods/``, ``interventions/``, ``backends/``):
every module of the package is imported on first use, so no list needs editing. Code outside
fairdistill registers through an entry point in the group ``fairdistill.benchmarks`` /
``fairdistill.methods`` / ``fairdistill.interventions`` / ``fairdistill.backends``
whose value is the module to import, or, without packaging, by naming its modules in
``$FAIRDISTILL_PLUGINS`` (comma-separated, importable from ``sys.path``).
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._package = package  # its modules are imported lazily so `fairdistill --help` stays fast
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            setattr(obj, "registry_name", name)
            if "name" not in vars(obj):  # a benchmark's name is the one it is registered under
                setattr(obj, "name", name)
            return obj

        return deco

    def _load(self) -> None:
        for mod in os.environ.get("FAIRDISTILL_PLUGINS", "").split(","):
            if mod.strip():
                try:
                    importlib.import_module(mod.strip())
                except ImportError as e:
                    raise UserError(f"FAIRDISTILL_PLUGINS names {mod.strip()!r}, which cannot be imported: {e}") from None
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self._package)
        mods = [f"{self._package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
        mods += [ep.value for ep in entry_points(group=self._package)]
        for mod in mods:
            importlib.import_module(mod)

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


BENCHMARKS: Registry = Registry("benchmark", "fairdistill.benchmarks")
METHODS: Registry = Registry("method", "fairdistill.methods")
BACKENDS: Registry = Registry("backend", "fairdistill.backends")
INTERVENTIONS: Registry = Registry("intervention", "fairdistill.interventions")
