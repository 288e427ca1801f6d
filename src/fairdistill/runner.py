"""The spine every entry point shares: a run specification -> ``execute`` -> a run folder.

``RunSpec`` names model, benchmark + options, method + options, intervention + options, seed and
data; ``execute`` builds the benchmark (failing fast on bad options or data), attaches the
intervention to the model for the run, wraps the backend in the method, and runs it into a run
store with progress, incremental saving and resume. ``fairdistill eval``, studies and the speed
scripts all go through it.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .benchmarks.base import Benchmark, EvalContext
from .data import file_sha256
from .errors import UserError
from .machine import environment, versions  # noqa: F401  (recorded in every run; importable from here too)
from .store import RunStore


class RunSpec(BaseModel):
    """One run: what is evaluated, how, on which data. ``out`` defaults to a folder named after it."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="model string (built-in name, folder, .gguf, hub id, hf:/openai:/vllm:...)")
    benchmark: str
    options: dict[str, Any] = Field(default_factory=dict, description="benchmark options")
    method: str | None = Field(None, description="inference-time method wrapping the model")
    method_options: dict[str, Any] = Field(default_factory=dict)
    intervention: str | None = Field(None, description="model intervention for the run (self-debias, sentence-debias, inlp)")
    intervention_options: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    data: str | None = None
    limit: int | None = None
    out: Path | None = None

    @field_validator("model")
    @classmethod
    def _no_credentials(cls, v: str) -> str:
        # a URL's user:password@ or ?api_key= never reaches config.json, a run identity or a folder name
        from .redaction import redact_urls

        return redact_urls(v)

    def build_benchmark(self) -> Benchmark:
        bench = build_benchmark(self.benchmark, self.options, seed=self.seed, data=self.data, limit=self.limit)
        bench.check_method(self.method)
        if self.out is not None and self.out.exists() and not self.out.is_dir():  # before any model loads
            raise UserError(f"{self.out} is a file, not a run folder; choose another --out")
        if self.method and self.method != "none":  # a bad method option fails before any model loads
            from .registry import METHODS

            # a method object handed to execute() may carry a name nobody registered (a self-distillation teacher)
            if self.method in METHODS.names():
                METHODS.get(self.method).validate_options(self.method_options)
        bench.check_method_options(self.method, self.method_options)
        return bench

    def default_out(self, bench: Benchmark) -> Path:
        ident = {"bench": bench.identity(), "model": self.model, "method": self.method, "mopts": self.method_options}
        if self.intervention:  # only then: the folders of runs without one keep their names
            ident.update(intervention=self.intervention, iopts=self.intervention_options)
        h = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]
        parts = [self.benchmark, _slug(self.model)] + [x for x in (self.intervention, self.method) if x]
        return Path("runs") / ("-".join(parts) + "-" + h)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s.strip("/").split("/")[-1])[:40] or "model"


def build_benchmark(name: str, options: dict[str, Any], *, seed: int = 0, data: str | None = None,
                    limit: int | None = None) -> Benchmark:
    """A benchmark from its registered name and options, validated by its ``Options`` model (a bad or
    unknown option is a one-line UserError)."""
    from .registry import BENCHMARKS

    return BENCHMARKS.get(name)(**{"data": data, "limit": limit, "seed": seed, **options})


def execute(spec: RunSpec, backend, *, bench: Benchmark | None = None, method=None, show_progress: bool = True,
            extra_config: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Run ``spec`` on ``backend`` (resuming what its folder holds); return the folder and the metrics.

    ``method``: a ready :class:`~fairdistill.methods.base.Method` object to use instead of building
    ``spec.method`` from the registry (a custom teacher, a test double). The spec's intervention is
    attached to the model for this run only."""
    from .interventions.base import applied
    from .methods.base import get_method

    bench = bench or spec.build_benchmark()
    bench.load_items()
    run_dir = spec.out or spec.default_out(bench)
    config = {"run_spec": json.loads(spec.model_dump_json()), **(extra_config or {})}
    with applied(backend, spec.intervention, spec.intervention_options):
        if method is None and spec.method:
            method = get_method(spec.method, backend, **spec.method_options)
        from .distributed import dist_env

        store = RunStore(run_dir)
        with store.exclusive(enabled=not dist_env().active):  # one process per run folder, bar a sharded run's ranks
            metrics = run_benchmark(bench, EvalContext(backend=backend, method=method, seed=spec.seed), store,
                                    show_progress=show_progress, extra_config=config)
    return run_dir, metrics


def progress_bar(disable: bool = False):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=disable,
        transient=False,
    )


#: seconds between the plain progress lines printed when output is not a terminal (CI, cluster logs, nohup)
PLAIN_PROGRESS_EVERY = 30.0


class PlainProgress:
    """Where no terminal shows a progress bar, a line on stderr every ``PLAIN_PROGRESS_EVERY`` seconds: items done,
    rate, ETA; a long run in a log is never silent until it ends."""

    def __init__(self, label: str, total: int, done: int, *, enabled: bool):
        self.label, self.total, self.done, self.enabled = label, total, done, enabled
        self.start = self.last = time.perf_counter()
        self.new = 0

    def update(self, n: int) -> None:
        self.done += n
        self.new += n
        now = time.perf_counter()
        if not self.enabled or (now - self.last < PLAIN_PROGRESS_EVERY and self.done < self.total):
            return
        self.last = now
        rate = self.new / max(now - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = f"{int(left // 60)}m{int(left % 60):02d}s" if left != float("inf") else "?"
        import sys

        print(f"{self.label}: {self.done}/{self.total} items, {rate:.2f} items/s, ETA {eta}", file=sys.stderr,
              flush=True)


def _check_estimate(store: RunStore, config: dict[str, Any], backend) -> bool:
    """Record the attached intervention's fingerprint (a projection's basis) in ``config`` and refuse to
    resume a run started with another one: its answers would mix two estimates. Returns True for a finished
    run that recorded none (made before fingerprints were kept): it is replayed from the cache entries of
    that time, and its config keeps recording none."""
    from .interventions.base import in_process

    iv = getattr(in_process(backend), "intervention", None)
    fp = iv.fingerprint() if iv is not None else None
    if not fp:
        return False
    config["intervention_fingerprint"] = fp
    finished = (store.path / "metrics.json").exists()
    if not (finished or store.has_results()):
        return False  # nothing kept: a new run (cache entries of an unrecorded estimate are not looked up)
    old = store.read_config().get("intervention_fingerprint")
    if old == fp:
        return False
    if old is None and finished:  # its results, or the cache entries of that time, are what it was made with
        del config["intervention_fingerprint"]
        return hasattr(backend, "legacy_keys")
    raise UserError(f"{store.path} was started with another {iv.name} estimate (basis "
                    f"{old or 'not recorded'}, now {fp}); its answers cannot be mixed: restore the estimate it "
                    "was made with (a study keeps it in <study>/<model>/interventions/) or delete the folder to "
                    "start the run again")


def run_benchmark(
    benchmark: Benchmark,
    ctx: EvalContext,
    store: RunStore,
    *,
    show_progress: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every item not yet in ``store``; return (and write) the final metrics.

    Launched over several processes (``torchrun`` / ``accelerate launch``: ``WORLD_SIZE`` > 1), the
    items left to do are cut into batches and dealt round-robin over the ranks; each rank evaluates
    its batches on its own model replica into ``results.rank{r}.jsonl``, then rank 0 merges the files
    into ``results.jsonl`` and writes the metrics once. Every rank returns the metrics.
    """
    from .distributed import all_gather, barrier, dist_env, shard_batches, sum_stats

    dist = dist_env()
    if ctx.method is not None:
        benchmark.check_method(getattr(ctx.method, "name", "method"))
    benchmark.check(ctx)
    items = benchmark.load_items()
    identity = {
        **benchmark.identity(),
        "model": ctx.backend.describe(),
        "method": getattr(ctx.method, "identity", lambda: None)(),
    }
    config = {
        "identity": identity,
        "versions": versions(),
        "data_sha256": {f: file_sha256(f) for f in benchmark.data_files()},
        "n_items": len(items),
        **(extra_config or {}),
    }
    order = {it["id"]: k for k, it in enumerate(items)}
    # every rank checks (and fails alike on) a folder holding another run before any rank writes
    store.check_config(config)
    legacy_replay = _check_estimate(store, config, ctx.backend)
    barrier()
    if dist.is_main:
        store.write_config(config, check_compatible=False)
        store.merge_shards(order)  # an earlier run's rank files, whatever its process count
    barrier()
    # results.jsonl alone: rank 0 has merged every rank file into it, and a rank that gets here late
    # must not count the records other ranks have started to append to theirs
    done = store.done_ids(shards=not dist.active)
    todo = [it for it in items if it["id"] not in done]
    bs = max(1, benchmark.batch_size_for(ctx))
    if dist.active:
        store.use_shard(dist.rank)
    mine = shard_batches(todo, bs, dist)
    # the timing of a run whose answers all come from the response cache (results.jsonl rebuilt on
    # another machine) says nothing about the model's speed: the earlier session's figures are kept
    old_meta = (store.read_metrics().get("meta") or {}) if (store.path / "metrics.json").exists() else {}
    hits0, misses0 = getattr(ctx.backend, "hits", 0), getattr(ctx.backend, "misses", 0)
    by0 = dict(getattr(ctx.backend, "answered_by", {}))
    t0 = time.perf_counter()
    n_new = 0
    if legacy_replay:
        ctx.backend.legacy_keys = True
    try:
        with progress_bar(disable=not show_progress or not dist.is_main) as prog:
            label = benchmark.name + (f" (rank 0 of {dist.world_size})" if dist.active else "")
            total = len(items) if not dist.active else sum(len(b) for b in mine)
            task = prog.add_task(label, total=total, completed=total - sum(len(b) for b in mine), rate="")
            plain = PlainProgress(label, total, total - sum(len(b) for b in mine),
                                  enabled=show_progress and dist.is_main and not prog.console.is_terminal)
            for batch in mine:
                records = benchmark.evaluate(batch, ctx)
                store.append(records)
                n_new += len(batch)
                rate = n_new / max(time.perf_counter() - t0, 1e-9)
                prog.update(task, advance=len(batch), rate=f"{rate:.2f} it/s")
                plain.update(len(batch))
    finally:
        store.close()
        if legacy_replay:
            ctx.backend.legacy_keys = False
    elapsed = time.perf_counter() - t0
    parts = all_gather({"n_new": n_new, "seconds": elapsed, "stats": ctx.backend.stats(),
                        "hits": getattr(ctx.backend, "hits", 0) - hits0,
                        "misses": getattr(ctx.backend, "misses", 0) - misses0,
                        "answered_by": {k: n - by0.get(k, 0) for k, n in getattr(ctx.backend, "answered_by", {}).items()
                                        if n > by0.get(k, 0)}})
    if not dist.is_main:
        barrier()  # rank 0 merges and writes the metrics
        return store.read_metrics()
    store.merge_shards(order)
    records = sorted(
        (r for r in store.load_results() if r["id"] in order), key=lambda r: order[r["id"]]
    )
    metrics = benchmark.metrics(records)
    stats = sum_stats([p["stats"] for p in parts])
    if legacy_replay and isinstance(stats.get("intervention"), dict):  # the estimate described was made later
        stats["intervention"] = {**stats["intervention"], "fingerprint": "not recorded: the answers were cached "
                                 "before estimates were fingerprinted, with an estimate not kept"}
    hits, misses = sum(p["hits"] for p in parts), sum(p["misses"] for p in parts)
    n_new = sum(p["n_new"] for p in parts)
    seconds = round(max(p["seconds"] for p in parts), 3)
    computed = misses > 0 or (n_new > 0 and not hits)  # the model answered something this session
    # *_this_session: what this session did (a run answered wholly from the cache has no speed: None);
    # timing: the speed measurement of the session that computed the answers, kept when a later session
    # only rebuilt results.jsonl from the cache (a fresh machine) or opened the finished run again
    this = {"new_items_this_session": n_new, "seconds_this_session": seconds if computed or not hits else None}
    measured = ({"items": n_new, "seconds": seconds, "from_earlier_session": False, "environment": environment(),
                 # part of this session's items came from the cache (a run resumed on a fresh machine, whose
                 # results.jsonl was rebuilt): the seconds were spent on the computed share alone
                 **({"calls_computed": misses, "calls_from_cache": hits,
                     "items_computed": round(n_new * misses / (hits + misses), 2)} if hits and misses else {})}
                if computed else _earlier_timing(old_meta))
    timing = {**this, **({"timing": measured} if measured else {})}
    metrics.setdefault("meta", {}).update(
        {
            "benchmark": benchmark.name,
            "n_items": len(records),
            **timing,
            **({"cache_hits_this_session": hits, "cache_misses_this_session": misses} if hits or misses else {}),
            **({"computed_on": on} if (on := computed_on(parts, old_meta, len(records) - n_new)) else {}),
            **({"processes": dist.world_size} if dist.active else {}),
            **({"backend_stats": stats} if stats else {}),
        }
    )
    store.write_metrics(metrics)
    barrier()
    return metrics


def computed_on(parts: list[dict[str, Any]], old_meta: dict[str, Any], earlier: int) -> list[dict[str, Any]]:
    """What computed the run's answers (the response cache records it per entry), most calls first:
    ``[{"environment": {...} or None (not recorded), "calls": n}, ...]``; more than one entry means the
    run mixes machines' answers (a run resumed elsewhere). ``earlier`` items were answered before this
    pass: their record is the last finished pass's, or an entry ``{"environment": None, "items": n}``."""
    total: dict[str, int] = {}
    for p in parts:
        for k, n in (p.get("answered_by") or {}).items():
            total[k] = total.get(k, 0) + n
    out = [{"environment": json.loads(k) if k else None, "calls": n}
           for k, n in sorted(total.items(), key=lambda kv: -kv[1])]
    if earlier:
        old = old_meta.get("computed_on")
        if not old:
            return out + [{"environment": None, "calls": None, "items": earlier}]
        for e in old:  # the earlier pass's calls, added to this pass's by environment
            mine = next((o for o in out if o["environment"] == e.get("environment")), None)
            if mine is None:
                out.append(dict(e))
            elif mine.get("calls") is not None and e.get("calls") is not None:
                mine["calls"] += e["calls"]
    return out


def _earlier_timing(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The speed measurement an earlier session left in ``metrics.json`` meta (older files: its
    ``*_this_session`` fields), marked as from an earlier session; None if it measured nothing."""
    t = meta.get("timing")
    if isinstance(t, dict) and t.get("items") and t.get("seconds"):
        return {**t, "from_earlier_session": True}
    n, sec = meta.get("new_items_this_session"), meta.get("seconds_this_session")
    if n and sec:
        return {"items": n, "seconds": sec, "from_earlier_session": True}
    return None
