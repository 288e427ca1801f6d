"""Run store: one folder per run, results appended per item as they complete.

Layout of a run directory::

    config.json     what was run (model, benchmark, method, options, versions, data hashes)
    results.jsonl   one JSON record per finished item, flushed as written (keyed by "id")
    metrics.json    final metrics, written at the end (tidy rows + summary)

An interrupted run resumes: items whose id is already in results.jsonl are skipped, and a torn
last line (the process died mid-write) is discarded.

A run launched over several processes (``torchrun`` / ``accelerate launch``) has each rank append
to its own ``results.rank{r}.jsonl``; :meth:`RunStore.merge_shards` folds them into
``results.jsonl`` (at the end of a run, and at the start of a resumed one, whatever its process
count), so a finished run has the single-process layout.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import UserError


class JsonlLog:
    """An append-only jsonl file of records keyed by ``"id"``, flushed per batch, safe to resume.

    ``load`` drops a torn last line (the process died mid-write) and truncates it away so appends
    start on a clean line; a broken line with more lines after it is not a torn write but a damaged
    file, and is a one-line UserError naming the file and line rather than silently lost data.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fh = None

    def load(self) -> dict[Any, dict[str, Any]]:
        """Records by id, in file order (last write wins)."""
        if not self.path.exists():
            return {}
        out: dict[Any, dict] = {}
        good_bytes = 0
        with self.path.open("rb") as f:
            lines = f.readlines()
        for k, raw in enumerate(lines):
            try:
                rec = json.loads(raw) if raw.endswith(b"\n") else None
            except json.JSONDecodeError:
                rec = None
            if rec is None:
                if k < len(lines) - 1:
                    raise UserError(f"{self.path}:{k + 1}: damaged line (not JSON); delete the file to start over")
                break  # torn write at the end of an interrupted run
            good_bytes += len(raw)
            out[rec["id"]] = rec
        if good_bytes < self.path.stat().st_size:
            with self.path.open("r+b") as f:
                f.truncate(good_bytes)
        return out

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        for rec in records:
            self._fh.write(json.dumps(rec, default=_jsonable, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def rank_path(path: str | os.PathLike, rank: int) -> Path:
    """The per-rank file beside ``path``: ``results.jsonl`` -> ``results.rank{rank}.jsonl``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.rank{int(rank)}{p.suffix}")


def shard_files(path: str | os.PathLike) -> list[Path]:
    p = Path(path)
    return sorted(p.parent.glob(f"{p.stem}.rank*{p.suffix}"))


def load_with_shards(path: str | os.PathLike) -> dict[Any, dict[str, Any]]:
    """Records by id from ``path`` and its per-rank files (call while no rank writes them)."""
    out = JsonlLog(path).load()
    for p in shard_files(path):
        out.update(JsonlLog(p).load())
    return out


class RunStore:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path} is a file, not a run folder; choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"cannot make the run folder {self.path}: a file stands in its path; choose another --out") from None
        self.results_path = self.path / "results.jsonl"
        self._results = JsonlLog(self.results_path)

    @contextmanager
    def exclusive(self, enabled: bool = True) -> Iterator[None]:
        """Hold the run folder for this process (a lock file with its PID): a second process started on the same
        folder stops in one line instead of computing every item again. Ranks of one sharded run (torchrun,
        accelerate) share the folder by design and pass ``enabled=False``."""
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform: run unguarded
            enabled = False
        if not enabled:
            yield
            return
        path = self.path / ".lock"
        fh = open(path, "a+")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                pid = fh.read().strip() or "unknown"
                raise UserError(f"the run folder {self.path} is in use by PID {pid} (another fairdistill process); "
                                "wait for it to finish, or choose another --out") from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            fh.close()  # closing releases the lock

    def use_shard(self, rank: int) -> None:
        """Append this process's results to ``results.rank{rank}.jsonl`` (one writer per file)."""
        self.close()
        self._results = JsonlLog(rank_path(self.results_path, rank))

    def shard_paths(self) -> list[Path]:
        return shard_files(self.results_path)

    def has_results(self) -> bool:
        return self.results_path.exists() or bool(self.shard_paths())

    # -- config -----------------------------------------------------------------------------
    def check_config(self, config: dict[str, Any]) -> None:
        """Refuse to resume a run whose identity-defining config differs."""
        p = self.path / "config.json"
        if p.exists() and self.has_results():
            old = json.loads(p.read_text())
            key = config.get("identity", {})
            if old.get("identity", {}) != key:
                raise UserError(
                    f"{self.path} holds a different run (config differs: "
                    f"{_diff(old.get('identity', {}), key)}); choose another --out"
                )

    def write_config(self, config: dict[str, Any], *, check_compatible: bool = True) -> None:
        """Write config.json (atomically: other ranks may be reading it); see :meth:`check_config`."""
        if check_compatible:
            self.check_config(config)
        tmp = self.path / "config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        tmp.replace(self.path / "config.json")

    def read_config(self) -> dict[str, Any]:
        p = self.path / "config.json"
        return json.loads(p.read_text()) if p.exists() else {}

    # -- results ----------------------------------------------------------------------------
    def _load_all(self) -> dict[Any, dict[str, Any]]:
        return load_with_shards(self.results_path)

    def load_results(self) -> list[dict[str, Any]]:
        """Every finished record: ``results.jsonl`` and any per-rank files (call while no rank writes)."""
        return list(self._load_all().values())

    def done_ids(self, *, shards: bool = True) -> set:
        """Ids of finished records; ``shards=False``: in ``results.jsonl`` alone (what a sharded run reads
        once rank 0 has merged, while other ranks may already be appending to their own files)."""
        return set(self._load_all()) if shards else set(JsonlLog(self.results_path).load())

    def merge_shards(self, order: dict[Any, int] | None = None) -> int:
        """Fold the per-rank files into ``results.jsonl`` (records sorted by ``order``, the item
        position, where given) and delete them; return how many records they held. The new file
        replaces the old in one rename, and the rank files go only after it, so a crash at any point
        loses nothing (a record in both places is one record). Call from one process, while none writes."""
        shards = self.shard_paths()
        if not shards:
            return 0
        self.close()
        records = JsonlLog(self.results_path).load()
        n = 0
        for p in shards:
            part = JsonlLog(p).load()
            n += len(part)
            records.update(part)
        recs = list(records.values())
        if order is not None:
            last = len(order)
            recs.sort(key=lambda r: order.get(r["id"], last))
        tmp = self.path / "results.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            for rec in recs:
                f.write(json.dumps(rec, default=_jsonable, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.results_path)
        for p in shards:
            p.unlink()
        return n

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        self._results.append(records)

    def close(self) -> None:
        self._results.close()

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
