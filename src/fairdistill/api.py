"""The Python API: ``import fairdistill as fd`` for notebooks and scripts, over the same spine as the CLI.

    run = fd.evaluate("bbq", model="smollm2", options={"categories": "Age", "limit": 50})
    run.rows                     # tidy metric rows with 95% CIs (plain dicts)
    run.to_pandas()              # the same as a DataFrame (pandas is optional)
    plain = fd.evaluate("bbq", model="qwen2.5-coder-1.5b", options={"mode": "generate", "limit": 20})
    debiased = fd.evaluate("bbq", model="qwen2.5-coder-1.5b", method="reprompting", options={"mode": "generate", "limit": 20})
    fd.compare(plain, debiased).rows
    fd.report([plain, debiased], out="report.html")
    fd.run_study("examples/study.yaml")

Every function resumes what its run folder holds, as the CLI does, and raises :class:`fairdistill.UserError`
with the CLI's one-line message on bad input.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import UserError


def _frame(rows: list[dict[str, Any]]):
    try:
        import pandas as pd
    except ImportError:
        raise UserError("to_pandas() needs pandas: pip install pandas (the rows are plain dicts without it)") from None
    return pd.DataFrame(rows)


@dataclass
class Run:
    """A finished run folder: its config, metrics (tidy ``rows`` with CIs) and per-item results."""

    path: Path
    config: dict[str, Any] = field(repr=False)
    metrics: dict[str, Any] = field(repr=False)

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        p = Path(path)
        if not (p / "metrics.json").exists():
            raise UserError(f"{p} is not a finished run folder (no metrics.json)")
        cfg = json.loads((p / "config.json").read_text()) if (p / "config.json").exists() else {}
        return cls(path=p, config=cfg, metrics=json.loads((p / "metrics.json").read_text()))

    @property
    def benchmark(self) -> str | None:
        return (self.config.get("identity") or {}).get("benchmark")

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self.metrics.get("rows") or [])

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.metrics.get("summary") or {})

    def results(self) -> list[dict[str, Any]]:
        """Every item's record (``results.jsonl``)."""
        from .store import RunStore

        return RunStore(self.path).load_results()

    def to_pandas(self):
        return _frame(self.rows)


@dataclass
class Comparison:
    """A paired comparison of two runs on the same items (see :mod:`fairdistill.compare`)."""

    data: dict[str, Any] = field(repr=False)

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self.data.get("rows") or [])

    def to_pandas(self):
        return _frame(self.rows)


def _path(run: Run | str | Path) -> Path:
    return run.path if isinstance(run, Run) else Path(run)


def evaluate(benchmark: str, model: Any, *, method: str | None = None, method_options: dict[str, Any] | None = None,
             intervention: str | None = None, intervention_options: dict[str, Any] | None = None,
             options: dict[str, Any] | None = None, out: str | Path | None = None, seed: int = 0,
             limit: int | None = None, data: str | None = None, dtype: str = "auto", device: str = "auto",
             backend_options: dict[str, Any] | None = None, cache: str | Path | None = None,
             progress: bool = False) -> Run:
    """Evaluate ``model`` (a model string as on the command line, or a loaded backend object) on ``benchmark``;
    returns the finished :class:`Run`. Options are validated before any model loads."""
    from .backends.base import Backend, load_backend
    from .runner import RunSpec, execute

    spec = RunSpec(model=model.name if isinstance(model, Backend) else str(model), benchmark=benchmark,
                   options=dict(options or {}), method=method, method_options=dict(method_options or {}),
                   intervention=intervention, intervention_options=dict(intervention_options or {}), seed=seed,
                   data=data, limit=limit, out=Path(out) if out is not None else None)
    bench = spec.build_benchmark()
    bench.load_items()  # bad data fails before a model loads
    if method:
        from .registry import METHODS

        METHODS.get(method)  # so does an unknown method name
    if intervention:
        from .interventions import get_intervention

        get_intervention(intervention, **(intervention_options or {}))
    backend = model if isinstance(model, Backend) else load_backend(
        str(model), device=device, dtype=dtype, **(backend_options or {}))
    if cache is not None:
        from .backends.cache import CachingBackend

        backend = CachingBackend(backend, cache)
    run_dir, _ = execute(spec, backend, bench=bench, show_progress=progress)
    return Run.open(run_dir)


def compare(baseline: Run | str | Path, method: Run | str | Path, *, seed: int = 0, write: bool = True) -> Comparison:
    """Paired comparison of two finished runs of one benchmark on the same items (method - baseline), with CIs,
    p-values and cost; also written as ``comparison.json`` in the method's run folder unless ``write=False``."""
    from .compare import compare as compare_runs

    comp = compare_runs(_path(baseline), _path(method), seed=seed)
    if write:
        (_path(method) / "comparison.json").write_text(json.dumps(comp, indent=2, default=str))
    return Comparison(comp)


def report(runs: Sequence[Run | str | Path], out: str | Path = "report.html", *, labels: Sequence[str] | None = None,
           title: str = "fairdistill report") -> Path:
    """A self-contained HTML report (and a Markdown summary beside it) of ``runs``; returns the HTML path."""
    from .report import build_report

    return build_report([_path(r) for r in runs], out, labels=labels, title=title)


def run_study(study: str | Path | dict[str, Any], *, out: str | Path | None = None, progress: bool = False) -> Path:
    """Run a study (a YAML file, or the same as a dict) and return its report's path."""
    from .study import run_study as _run_study

    if isinstance(study, dict):
        import yaml

        folder = Path(out or study.get("out") or Path("runs") / str(study.get("name", "study")))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "study.yaml"
        path.write_text(yaml.safe_dump(study, sort_keys=False))
        study = path
    return _run_study(study, out=out, show_progress=progress)


__all__ = ["Run", "Comparison", "evaluate", "compare", "report", "run_study"]
