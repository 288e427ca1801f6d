"""Paired comparison of two runs on the same items: generic statistics only.

A benchmark turns its records into per-unit outcomes (:meth:`Benchmark.paired_units`: one unit per
BBQ item, per B-score question...) and names its statistics; :func:`paired_compare` matches the
units of two runs by id and reports, per cell (e.g. context condition):

* each statistic for the baseline, the method and their **difference** (method - baseline), with a
  95% percentile bootstrap CI from 1,000 seeded resamples. Resampling is *paired*: one resample
  index matrix over units (:func:`fairdistill.stats.bootstrap.resample_indices`) is applied to both
  runs, so the CI of the difference reflects that the same units were answered twice (the CIs
  equal ``scipy.stats.bootstrap(..., paired=True, method="percentile")`` on the same generator);
* a paired-bootstrap p-value for each difference (two-sided, ``2 * min(P*(d <= 0), P*(d >= 0))``),
  and for a correctness statistic McNemar's exact test (``scipy.stats.binomtest`` on the discordant
  pairs; p = 1 when there are none) and the 2x2 **transition** table (correct->correct, ...);
* **cost**: calls and tokens per item (:func:`cost_summary`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..errors import UserError
from .bootstrap import resample_indices

TRANSITIONS = ("correct->correct", "correct->incorrect", "incorrect->correct", "incorrect->incorrect")
_SHORT = {"correct->correct": "c->c", "correct->incorrect": "c->i", "incorrect->correct": "i->c", "incorrect->incorrect": "i->i"}

DEFINITIONS: dict[str, str] = {
    "run": "baseline / method: the two runs on the same items; difference: method - baseline.",
    "ci": (
        "95% percentile bootstrap interval, 1,000 resamples of items (seeded); paired: the same "
        "resampled items for both runs, so the difference's CI accounts for the pairing."
    ),
    "p_value": (
        "difference in a correctness rate (accuracy): McNemar exact test (binomial test on the discordant "
        "transitions); any other difference: paired bootstrap, 2 * min(share of resampled differences "
        "<= 0, >= 0)."
    ),
    "transitions": ("Per item, baseline correctness -> method correctness (c = correct, i = incorrect; "
                    "counts, and percent of items)."),
    "cost": (
        "Per item: model calls, prompt/completion tokens (records) and wall seconds (metrics.json meta "
        "timing: seconds / items of the session that computed the answers, kept when a later session "
        "rebuilt the run from the response cache; None when no session measured it); ratio = "
        "method / baseline. Calls answered from the response cache cost no seconds (e.g. reprompting's "
        "first turn is the plain run's question): seconds understate a method that shares a cache with "
        "its baseline, calls and tokens do not (meta cache_hits_this_session says how many)."
    ),
}


# ----------------------------------------------------------------------------------------------
# statistics on arrays
# ----------------------------------------------------------------------------------------------


def _ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float | None, float | None]:
    v = values[~np.isnan(values)]
    if v.size == 0:
        return None, None
    a = (1 - confidence) / 2
    lo, hi = np.quantile(v, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_p(diffs: np.ndarray) -> float | None:
    """Two-sided paired-bootstrap p-value of a difference: 2 * min(P(d <= 0), P(d >= 0)), <= 1."""
    d = diffs[~np.isnan(diffs)]
    if d.size == 0:
        return None
    return float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))


def mcnemar_exact(base_correct: Sequence[bool], method_correct: Sequence[bool]) -> dict[str, Any]:
    from scipy.stats import binomtest

    b = np.asarray(base_correct, dtype=bool)
    m = np.asarray(method_correct, dtype=bool)
    n_ci = int((b & ~m).sum())  # correct -> incorrect
    n_ic = int((~b & m).sum())  # incorrect -> correct
    n = n_ci + n_ic
    p = 1.0 if n == 0 else float(binomtest(n_ic, n, 0.5, alternative="two-sided").pvalue)
    return {"test": "McNemar exact (binomial on discordant pairs)", "correct->incorrect": n_ci,
            "incorrect->correct": n_ic, "n_discordant": n, "p_value": p}


def transition_table(base_correct: Sequence[bool], method_correct: Sequence[bool]) -> dict[str, Any]:
    b = np.asarray(base_correct, dtype=bool)
    m = np.asarray(method_correct, dtype=bool)
    n = int(b.size)
    counts = {
        "correct->correct": int((b & m).sum()),
        "correct->incorrect": int((b & ~m).sum()),
        "incorrect->correct": int((~b & m).sum()),
        "incorrect->incorrect": int((~b & ~m).sum()),
    }
    pct = {k: (100.0 * v / n if n else None) for k, v in counts.items()}
    return {"n": n, "counts": counts, "percent": pct}


def paired_cell(
    base: dict[str, np.ndarray], meth: dict[str, np.ndarray], statistics: dict[str, Callable[..., np.ndarray]],
    n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95, binary: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Values, CIs and p-values of each statistic for one cell of paired items.

    ``base``/``meth``: per-item arrays of the same items in the same order. ``statistics``: name ->
    ``fn(arrays)``, reducing the last axis (called on ``(n,)`` arrays and on ``(n_resamples, n)``
    resamples). ``binary``: (statistic, array) where the array holds per-item correctness and the
    statistic is its mean: that difference gets McNemar's exact test; every difference also gets a
    paired-bootstrap p-value.
    """
    n = len(next(iter(base.values())))
    idx = resample_indices(n, n_resamples, seed)
    out: dict[str, Any] = {"n": n}
    for metric, fn in statistics.items():
        vb, vm = float(fn(base)), float(fn(meth))
        bb = fn({k: v[idx] for k, v in base.items()})
        bm = fn({k: v[idx] for k, v in meth.items()})
        diff_b = bm - bb
        out[metric] = {
            "baseline": {"value": _nan_none(vb), "ci": _ci(bb, confidence)},
            "method": {"value": _nan_none(vm), "ci": _ci(bm, confidence)},
            "difference": {"value": _nan_none(vm - vb), "ci": _ci(diff_b, confidence),
                           "p_bootstrap": bootstrap_p(diff_b)},
        }
    if binary is not None:
        out["mcnemar"] = mcnemar_exact(base[binary[1]], meth[binary[1]])
    return out


def _nan_none(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def _per_item(records: Sequence[dict], key: str) -> float | None:
    vals = [r.get(key) for r in records]
    if not vals or any(v is None for v in vals):
        return None
    return float(np.mean(vals))


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def cost_summary(base_records: Sequence[dict], method_records: Sequence[dict]) -> dict[str, Any]:
    """Calls and tokens per item of both runs (from the per-item records) and method / baseline ratios."""
    cost: dict[str, Any] = {}
    for key in ("calls", "prompt_tokens", "completion_tokens"):
        b, m = _per_item(base_records, key), _per_item(method_records, key)
        cost[f"{key}_per_item"] = {"baseline": b, "method": m, "ratio": _ratio(m, b)}
    bt = [(r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0) for r in base_records]
    mt = [(r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0) for r in method_records]
    tb = float(np.mean(bt)) if cost["prompt_tokens_per_item"]["baseline"] is not None else None
    tm = float(np.mean(mt)) if cost["prompt_tokens_per_item"]["method"] is not None else None
    cost["tokens_per_item"] = {"baseline": tb, "method": tm, "ratio": _ratio(tm, tb)}
    return cost


def paired_compare(
    base_units: Sequence[dict], method_units: Sequence[dict], statistics: Callable[[str], dict[str, Callable]],
    *, binary: tuple[str, str] | None = None, seed: int = 0, n_resamples: int = 1000, confidence: float = 0.95,
) -> dict[str, Any]:
    """Paired comparison of two runs' per-unit outcomes, cell by cell.

    A unit is a dict ``{"id", "cell", <array fields>}`` (one BBQ item, one B-score question...);
    units are matched by id. ``statistics(cell)`` gives the named statistics of that cell (see
    :func:`paired_cell`). Returns tidy ``rows`` (cell, metric, run in baseline/method/difference,
    value, ci_low, ci_high, n, p_value on differences), ``transitions`` and ``tests`` per cell when
    ``binary`` is given, and match counts.
    """
    bmap = {u["id"]: u for u in base_units}
    mmap = {u["id"]: u for u in method_units}
    ids = [i for i in bmap if i in mmap]  # baseline order
    if not ids:
        raise UserError("the two runs share no item ids: nothing to compare")
    rows: list[dict[str, Any]] = []
    transitions: dict[str, Any] = {}
    tests: dict[str, Any] = {}
    per_cell: dict[str, Any] = {}
    cells = list(dict.fromkeys(bmap[i]["cell"] for i in ids))
    for cell in cells:
        cid = [i for i in ids if bmap[i]["cell"] == cell]
        fields = [k for k in bmap[cid[0]] if k not in ("id", "cell")]
        B = {k: np.asarray([bmap[i][k] for i in cid]) for k in fields}
        M = {k: np.asarray([mmap[i][k] for i in cid]) for k in fields}
        stats = statistics(cell)
        res = paired_cell(B, M, stats, n_resamples=n_resamples, seed=seed, confidence=confidence, binary=binary)
        per_cell[cell] = res
        for metric in stats:
            for run in ("baseline", "method", "difference"):
                c = res[metric][run]
                row = {"condition": cell, "metric": metric, "run": run, "value": c["value"],
                       "ci_low": c["ci"][0], "ci_high": c["ci"][1], "n": len(cid)}
                if run == "difference":
                    exact = binary is not None and metric == binary[0]
                    row["p_value"] = res["mcnemar"]["p_value"] if exact else c["p_bootstrap"]
                rows.append(row)
        tests[cell] = {m: {"test": "paired bootstrap (two-sided)", "resamples": n_resamples,
                           "p_value": res[m]["difference"]["p_bootstrap"]} for m in stats}
        if binary is not None:
            transitions[cell] = transition_table(B[binary[1]], M[binary[1]])
            tests[cell][binary[0]] = res["mcnemar"]
            for k in TRANSITIONS:
                t = transitions[cell]
                rows.append({"condition": cell, "metric": "transition " + _SHORT[k], "run": "count",
                             "value": t["counts"][k], "percent": t["percent"][k], "n": t["n"]})
    return {"rows": rows, "transitions": transitions, "tests": tests, "per_condition": per_cell,
            "n_matched": len(ids), "n_only_baseline": len(bmap) - len(ids), "n_only_method": len(mmap) - len(ids)}


