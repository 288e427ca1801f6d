"""Run store: one folder per run, results appended per item as they complete.

Layout of a run directory::

    config.json     what was run (model, benchmark, method, options, versions, data hashes)
    results.jsonl   one JSON record per finished item, flushed as written (keyed by "id")
    metrics.json    final metrics, written at the end (tidy rows + summary)

An interrupted run resumes: items whose id is already in results.jsonl are skipped, and a torn
last line (the process died mid-write) is discarded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .errors import UserError


class RunStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.results_path = self.path / "results.jsonl"
        self._fh = None

    # -- config -----------------------------------------------------------------------------
    def write_config(self, config: dict[str, Any], *, check_compatible: bool = True) -> None:
        """Write config.json; refuse to resume a run whose identity-defining config differs."""
        p = self.path / "config.json"
        if check_compatible and p.exists() and self.results_path.exists():
            old = json.loads(p.read_text())
            key = config.get("identity", {})
            if old.get("identity", {}) != key:
                raise UserError(
                    f"{self.path} holds a different run (config differs: "
                    f"{_diff(old.get('identity', {}), key)}); choose another --out"
                )
        p.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))

    def read_config(self) -> dict[str, Any]:
        p = self.path / "config.json"
        return json.loads(p.read_text()) if p.exists() else {}

    # -- results ----------------------------------------------------------------------------
    def load_results(self) -> list[dict[str, Any]]:
        if not self.results_path.exists():
            return []
        out: dict[Any, dict] = {}
        good_bytes = 0
        with self.results_path.open("rb") as f:
            for raw in f:
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError:
                    break  # torn write at the end of an interrupted run
                if not raw.endswith(b"\n"):
                    break
                good_bytes += len(raw)
                out[rec["id"]] = rec  # last write wins; ids are unique in practice
        size = self.results_path.stat().st_size
        if good_bytes < size:  # drop the torn tail so appends start on a clean line
            with self.results_path.open("r+b") as f:
                f.truncate(good_bytes)
        return list(out.values())

    def done_ids(self) -> set:
        return {r["id"] for r in self.load_results()}

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        if self._fh is None:
            self._fh = self.results_path.open("a", encoding="utf-8")
        for rec in records:
            self._fh.write(json.dumps(rec, default=_jsonable, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    # -- metrics ----------------------------------------------------------------------------
    def write_metrics(self, metrics: dict[str, Any]) -> None:
        tmp = self.path / "metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2, default=_jsonable))
        tmp.replace(self.path / "metrics.json")

    def read_metrics(self) -> dict[str, Any]:
        p = self.path / "metrics.json"
        if not p.exists():
            raise UserError(f"no metrics.json in {self.path}: the run has not finished")
        return json.loads(p.read_text())


def _jsonable(o: Any):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _diff(a: dict, b: dict) -> str:
    keys = sorted(set(a) | set(b))
    parts = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
    return "; ".join(parts[:3])
