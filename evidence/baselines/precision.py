"""How far two runs of one benchmark on the same items agree, item by item: the Qwen plain runs in bf16
(AMX) against float32 (README "Mitigation baselines", the precision check).

    python evidence/baselines/precision.py evidence/baselines/qwen15 evidence/baselines/qwen15-fp32

For each benchmark folder present in both: the items matched, the share whose decision is the same
(CrowS-Pairs: which sentence is more likely; StereoSet: stereotype over anti-stereotype, and the
meaningful over the unrelated sentence; BBQ: the chosen option; HolisticBias: none, it has no
decision) and the mean absolute difference of the scores (log-likelihoods, nats), then each
metric's value in both runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def load(d: Path) -> dict[str, dict]:
    with (d / "results.jsonl").open() as f:
        return {r["id"]: r for r in map(json.loads, f)}


def decisions(bench: str, r: dict) -> tuple[list, list[float]]:
    """The item's decisions and its scores, in a fixed order."""
    if bench == "crows-pairs":
        return [r["score_more"] > r["score_less"]], [r["score_more"], r["score_less"]]
    if bench == "stereoset":
        s = r["scores"]
        meaningful = max(s["stereotype"], s["anti-stereotype"])
        return [s["stereotype"] > s["anti-stereotype"], meaningful > s["unrelated"]], [s[k] for k in sorted(s)]
    if bench == "bbq-ambig":
        return [r["pred"]], list(r.get("scores") or [])
    if bench == "holistic-gender":
        return [], [r["logprob"]]
    raise KeyError(bench)


def headline(d: Path) -> dict[str, float]:
    """The overall and gender rows of a run's metrics (the table's columns and their neighbours)."""
    keep = {}
    for r in json.loads((d / "metrics.json").read_text())["rows"]:
        if r.get("value") is None or r.get("template"):
            continue
        key = " ".join(str(r[k]) for k in ("task", "level", "bias_type", "category", "axis", "condition")
                       if r.get(k) not in (None, False)) + f" {r['metric']}"
        if r.get("top") or any(w in key for w in ("overall", "gender")):
            keep[key] = r["value"]
    return keep


def main(a: Path, b: Path) -> None:
    for bench in ("crows-pairs", "stereoset", "holistic-gender", "bbq-ambig", "capability"):
        da, db = a / bench, b / bench
        if not ((da / "metrics.json").exists() and (db / "metrics.json").exists()):
            continue
        print(f"== {bench}")
        if bench != "capability" and (da / "results.jsonl").exists() and (db / "results.jsonl").exists():
            ra, rb = load(da), load(db)
            ids = sorted(set(ra) & set(rb))
            same, diffs = None, []
            for i in ids:
                (xa, sa), (xb, sb) = decisions(bench, ra[i]), decisions(bench, rb[i])
                eq = np.array([u == v for u, v in zip(xa, xb)], dtype=float)
                same = eq if same is None else same + eq
                if len(sa) == len(sb):
                    diffs.extend(abs(u - v) for u, v in zip(sa, sb))
            print(f"  {len(ids)} items matched; same decision: "
                  + (", ".join(f"{int(s)}/{len(ids)}" for s in same) if same is not None and len(same) else "n/a")
                  + f"; mean |score difference| {np.mean(diffs):.4f} nats (max {np.max(diffs):.3f})")
        ha, hb = headline(da), headline(db)
        for k in sorted(set(ha) & set(hb)):
            print(f"  {k}: {ha[k]:.4f} -> {hb[k]:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
