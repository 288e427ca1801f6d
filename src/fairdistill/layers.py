"""The package's layers, lowest first: a module may import from its own layer and the ones below, never above.

``tests/test_layers.py`` checks every import in ``src/fairdistill`` (function-local ones included) against this
order, so a new upward import fails the suite. ``KNOWN_UPWARD`` lists the ones that remain from before the
order was declared, each to be removed (the list may only shrink).
"""
from __future__ import annotations

import ast
from pathlib import Path

#: lowest first; a name is a top-level module or subpackage of fairdistill
LAYERS: list[tuple[str, ...]] = [
    ("_version", "errors", "registry", "redaction", "machine", "options", "data", "store", "distributed", "stats",
     "layers", "modeling", "text"),
    ("backends",),                      # answer model requests
    ("methods", "interventions"),       # change how a question is asked, or how the model computes
    ("benchmarks",),                    # items -> requests -> records -> metrics
    ("runner", "compare", "teacher_rule"),  # the pipeline: execute, paired comparison, the rule over comparisons
    ("distill",),                       # training that evaluates through the pipeline
    ("study", "executors", "report", "doctor", "api", "cli", "__main__", "__init__"),  # entry points
]

#: upward imports that predate the declared order: (importing module, imported module)
KNOWN_UPWARD: frozenset[tuple[str, str]] = frozenset()

ROOT = Path(__file__).resolve().parent


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for k, names in enumerate(LAYERS):
        if top in names:
            return k
    raise KeyError(f"fairdistill.{module} is in no layer of fairdistill.layers.LAYERS: add it there")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imports(path: Path) -> list[str]:
    """The fairdistill modules ``path`` imports (relative imports resolved), anywhere in the file."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # from . import x, y: each is a module of that package
                    out += [".".join(base + [a.name]) for a in node.names]
                    continue
            elif node.module and node.module.startswith("fairdistill."):
                target = node.module[len("fairdistill."):]
            else:
                continue
            out.append(target)
        elif isinstance(node, ast.Import):
            out += [a.name[len("fairdistill."):] for a in node.names if a.name.startswith("fairdistill.")]
    return [t for t in out if t]


def upward_imports() -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module's layer is above the importer's."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        me = _module_name(path)
        for target in imports(path):
            if _layer(target) > _layer(me):
                found.append((me, target))
    return sorted(set(found))
