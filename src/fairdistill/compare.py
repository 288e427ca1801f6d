"""``compare(a, b)``: the paired comparison of two finished runs of one benchmark (method vs baseline).

The benchmark named in the runs' config turns each run's records into per-unit outcomes and names
its statistics (:meth:`Benchmark.paired_units`, :meth:`Benchmark.paired_statistics`); the
statistics themselves are generic (:mod:`fairdistill.stats.paired`). Used by ``eval --compare``,
studies and self-distillation alike.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .errors import UserError
from .stats.paired import DEFINITIONS, _ratio, cost_summary, paired_compare
from .store import RunStore


def compare_records(base_records: Sequence[dict], method_records: Sequence[dict], benchmark: str,
                    seed: int = 0, n_resamples: int = 1000, confidence: float = 0.95) -> dict[str, Any]:
    """Paired comparison of two lists of one benchmark's records (matched by unit id)."""
    from .registry import BENCHMARKS

    cls = BENCHMARKS.get(benchmark)
    out = paired_compare(cls.paired_units(base_records), cls.paired_units(method_records), cls.paired_statistics,
                         binary=cls.paired_binary, seed=seed, n_resamples=n_resamples, confidence=confidence)
    ids = {u["id"] for u in cls.paired_units(base_records)} & {u["id"] for u in cls.paired_units(method_records)}
    key = cls.paired_key
    out["cost"] = cost_summary([r for r in base_records if r.get(key) in ids],
                               [r for r in method_records if r.get(key) in ids])
    out["benchmark"] = benchmark
    out["definitions"] = {**DEFINITIONS, **cls.paired_definitions()}
    return out


def _wall(run_dir: Path) -> tuple[float | None, float | None]:
    p = Path(run_dir) / "metrics.json"
    if not p.exists():
        return None, None
    meta = json.loads(p.read_text()).get("meta", {})
    t = meta.get("timing")  # the session that computed the answers (see runner)
    if isinstance(t, dict):  # items_computed: a session that also read some of its answers from the cache
        sec, new = t.get("seconds"), t.get("items_computed") or t.get("items")
    else:  # files written before meta.timing existed
        sec, new = meta.get("seconds_this_session"), meta.get("new_items_this_session")
    if sec is None or not new:  # no session measured this run's speed
        return None, None
    return float(sec), float(sec) / new


def _environment(run_dir: Path) -> dict[str, Any] | None:
    """What computed a run's answers: one environment, ``{"mixed": [...]}`` when its answers come from
    more than one (a run resumed on another kind of machine), or None when not recorded."""
    p = Path(run_dir) / "metrics.json"
    meta = (json.loads(p.read_text()).get("meta") or {}) if p.exists() else {}
    on = meta.get("computed_on")
    envs = [e.get("environment") for e in on or []]
    known = [e for e in envs if e]
    if len(known) > 1:  # per answer, from the response cache: two kinds of machine
        return {"mixed": known}
    if known:  # one kind, unless some answers' machine was not recorded (older cache entries)
        return known[0] if None not in envs else None
    t = meta.get("timing")
    return t.get("environment") if isinstance(t, dict) else None


def compare(base_dir: str | Path, method_dir: str | Path, seed: int = 0, n_resamples: int = 1000) -> dict[str, Any]:
    """Paired comparison of two run folders of the same benchmark; see the module docstring."""
    base_dir, method_dir = Path(base_dir), Path(method_dir)
    recs, names = [], []
    for d in (base_dir, method_dir):
        if not (d / "results.jsonl").exists():
            raise UserError(f"{d} holds no results.jsonl: run the evaluation first")
        r = RunStore(d).load_results()
        if not r:
            raise UserError(f"{d}/results.jsonl holds no records")
        recs.append(r)
        names.append(((RunStore(d).read_config() or {}).get("identity") or {}).get("benchmark"))
    if names[0] and names[1] and names[0] != names[1]:
        raise UserError(f"cannot compare runs of different benchmarks: {names[0]} ({base_dir}) vs {names[1]} ({method_dir})")
    if not (names[0] or names[1]):
        raise UserError(f"{base_dir} and {method_dir} do not say which benchmark they ran (no config.json): nothing "
                        "to pair their items by")
    out = compare_records(recs[0], recs[1], benchmark=names[0] or names[1], seed=seed, n_resamples=n_resamples)
    (sb, pb), (sm, pm) = _wall(base_dir), _wall(method_dir)
    out["cost"]["seconds_total"] = {"baseline": sb, "method": sm, "ratio": _ratio(sm, sb)}
    out["cost"]["seconds_per_item"] = {"baseline": pb, "method": pm, "ratio": _ratio(pm, pb)}
    envs = {}
    for d, key in ((base_dir, "baseline"), (method_dir, "method")):
        cfg = RunStore(d).read_config()
        envs[key] = _environment(d)
        out.setdefault("runs", {})[key] = {"dir": str(d), "method": (cfg.get("identity") or {}).get("method"),
                                           "computed_on": envs[key]}
    # answers computed on different machines or library versions differ by numerics alone on near-ties:
    # say so, rather than let that pass for the method's effect
    mixed = any(isinstance(e, dict) and "mixed" in e for e in envs.values())
    out["same_environment"] = (False if mixed else None if None in envs.values()
                               else envs["baseline"] == envs["method"])
    if out["same_environment"] is False:  # seconds on two kinds of machine: no ratio to speak of
        for key in ("seconds_total", "seconds_per_item"):
            out["cost"][key]["ratio"] = None
    # cost rows in the tidy table too, so the printed table shows them
    for key, c in out["cost"].items():
        out["rows"].append({"condition": "all", "metric": key.replace("_per_item", "/item"), "run": "ratio",
                            "value": c["ratio"], "baseline": c["baseline"], "method": c["method"],
                            "n": out["n_matched"]})
    return out


compare_run_dirs = compare  # the name earlier releases used
