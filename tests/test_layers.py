"""The tree is the architecture: no module imports from a layer above its own (fairdistill.layers declares the
order), and generic modules name no registered benchmark."""
from __future__ import annotations

import ast
from pathlib import Path

from fairdistill.layers import KNOWN_UPWARD, LAYERS, ROOT, _layer, imports, upward_imports


def test_no_new_upward_import():
    found = set(upward_imports())
    new = found - KNOWN_UPWARD
    assert not new, f"imports from a layer above: {sorted(new)} (fairdistill/layers.py declares the order)"
    assert not KNOWN_UPWARD - found, "an allowed upward import is gone: remove it from KNOWN_UPWARD"


def test_every_module_has_a_layer_and_the_check_sees_function_local_imports(tmp_path):
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        _layer(".".join(rel.parts))  # raises for a module in no layer
    assert len(LAYERS) >= 6
    # a lazy import inside a function counts as much as one at the top
    assert "runner" in imports(ROOT / "distill" / "self_distill.py")


def test_generic_modules_name_no_benchmark():
    """The pipeline, statistics, backends, methods and interventions never name a registered benchmark in a string:
    they dispatch on what a benchmark declares."""
    from fairdistill.registry import BENCHMARKS

    names = set(BENCHMARKS.names())
    generic = [p for sub in ("stats", "backends", "methods", "interventions") for p in (ROOT / sub).rglob("*.py")]
    generic += [ROOT / f for f in ("runner.py", "compare.py", "teacher_rule.py", "store.py", "options.py", "machine.py")]
    hits = []
    for path in generic:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not hits, hits
