"""Runs a benchmark against a backend into a run store, with progress, incremental saving and resume."""
from __future__ import annotations

import platform
import time
from typing import Any

from . import __version__
from .benchmarks.base import Benchmark, EvalContext
from .data import file_sha256
from .store import RunStore


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


def versions() -> dict[str, str]:
    out = {"fairdistill": __version__, "python": platform.python_version()}
    for mod in ("torch", "transformers", "peft", "numpy", "scipy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def run_benchmark(
    benchmark: Benchmark,
    ctx: EvalContext,
    store: RunStore,
    *,
    show_progress: bool = True,
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every item not yet in ``store``; return (and write) the final metrics."""
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
    store.write_config(config)
    done = store.done_ids()
    todo = [it for it in items if it["id"] not in done]
    t0 = time.perf_counter()
    n_new = 0
    try:
        with progress_bar(disable=not show_progress) as prog:
            task = prog.add_task(benchmark.name, total=len(items), completed=len(items) - len(todo), rate="")
            bs = max(1, benchmark.batch_size)
            for i in range(0, len(todo), bs):
                batch = todo[i : i + bs]
                records = benchmark.evaluate(batch, ctx)
                store.append(records)
                n_new += len(batch)
                rate = n_new / max(time.perf_counter() - t0, 1e-9)
                prog.update(task, advance=len(batch), rate=f"{rate:.2f} it/s")
    finally:
        store.close()
    elapsed = time.perf_counter() - t0
    order = {it["id"]: k for k, it in enumerate(items)}
    records = sorted(
        (r for r in store.load_results() if r["id"] in order), key=lambda r: order[r["id"]]
    )
    metrics = benchmark.metrics(records)
    metrics.setdefault("meta", {}).update(
        {
            "benchmark": benchmark.name,
            "n_items": len(records),
            "new_items_this_session": n_new,
            "seconds_this_session": round(elapsed, 3),
            **({"backend_stats": ctx.backend.stats()} if ctx.backend.stats() else {}),
        }
    )
    store.write_metrics(metrics)
    return metrics
