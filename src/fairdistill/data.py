"""Where evaluation data lives, and strict readers that name the file and line of a bad row.

Data is never bundled. Resolution order for a dataset folder:
1. an explicit path given by the user,
2. ``$FAIRDISTILL_DATA/<name>``,
3. ``<repo root>/../shared/data/<name>`` (the development checkout layout),
4. the download cache ``$FAIRDISTILL_CACHE/data/<name>`` (filled by a benchmark's downloader).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


def cache_dir() -> Path:
    root = os.environ.get("FAIRDISTILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fairdistill"
    )
    p = Path(root)
    p.mkdir(parents=True, exist_ok=True)
    return p


def file_lock(lock: Path):
    """An inter-process lock file (parents created): parallel runs doing the same one-time work (a
    model conversion, a projection estimate) wait for the first instead of repeating or clobbering it."""
    from filelock import FileLock

    lock.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock))


def _candidate_roots() -> list[Path]:
    roots = []
    env = os.environ.get("FAIRDISTILL_DATA")
    if env:
        roots.append(Path(env))
    here = Path(__file__).resolve()
    # src/fairdistill/data.py -> repo root is parents[2]; shared/ sits beside the checkout
    for up in here.parents[1:5]:
        roots.append(up / "shared" / "data")
        roots.append(up.parent / "shared" / "data")
    roots.append(Path.cwd() / ".." / "shared" / "data")
    roots.append(cache_dir() / "data")
    return roots


def find_dataset(name: str, path: str | os.PathLike | None = None, must_exist: bool = True) -> Path:
    """Return the folder of dataset ``name`` (e.g. ``"bbq"``)."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise UserError(f"data folder not found: {p}")
        return p
    for root in _candidate_roots():
        if (root / name).exists():
            return (root / name).resolve()
    if must_exist:
        raise UserError(
            f"dataset {name!r} not found; pass --data PATH or set FAIRDISTILL_DATA to a folder containing {name}/"
        )
    return cache_dir() / "data" / name


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield rows of a jsonl file; a malformed line is a UserError naming file and line number."""
    for _, row in read_jsonl_numbered(path):
        yield row


def read_jsonl_numbered(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` pairs, so callers can name the line of a row they reject."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"file not found: {p}")
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{lineno}: malformed JSON line ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{p}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_records(path: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """``(where, row)`` pairs of a table of rows: a JSON array (``.json``), jsonl, CSV or TSV (by suffix).

    Read as UTF-8 with an optional BOM; a BOM left on a key (some JSON files carry one on their first
    key) is dropped. ``where`` names the row for one-line errors: "file:line" (jsonl, CSV, TSV) or
    "file: row k" (a JSON array)."""
    import csv

    p = Path(path)
    if not p.is_file():
        raise UserError(f"file not found: {p}")
    text = p.read_text(encoding="utf-8-sig")
    clean = lambda r: {str(k).lstrip("\ufeff"): v for k, v in r.items()}  # noqa: E731
    if p.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        return [(f"{p}:{reader.line_num}", clean(r)) for r in reader]
    if p.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}:{e.lineno}: malformed JSON ({e.msg})") from None
        if not all(isinstance(r, dict) for r in data):
            k = next(k for k, r in enumerate(data, 1) if not isinstance(r, dict))
            raise UserError(f"{p}: row {k} is not a JSON object")
        return [(f"{p}: row {k}", clean(r)) for k, r in enumerate(data, 1)]
    return [(f"{p}:{n}", clean(r)) for n, r in read_jsonl_numbered(p)]


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (empty file: {}); other content is a one-line UserError."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{p}: expected a mapping at the top level")
    return raw


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` once (atomic rename); used when data is not present locally."""
    if dest.exists():
        return dest
    import httpx

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as r:
            r.raise_for_status()
            with tmp.open("wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
    except httpx.HTTPError as e:
        raise UserError(f"could not download {url}: {e}") from None
    tmp.rename(dest)
    return dest
