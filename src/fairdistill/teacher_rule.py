"""Choosing a self-distillation teacher by a rule written down before any answer is computed.

A study names the rule in its YAML (``teacher_rule`` of a ``self_distill`` training); this module
applies it to the paired comparisons (``comparison.json``) of the candidate methods against the
plain model. Nothing here knows a benchmark: the rule names the benchmark entries, the cells
(conditions) and the statistics it reads.

Rule (version 2):

1. **primary**: the paired difference (method - plain) of ``primary.statistic`` in ``primary.cell`` of
   ``primary.benchmark`` must have its whole 95% CI below 0 (for BBQ: the ambiguous
   ``stereotyped_rate``);
2. **non-inferiority**: for every entry of ``noninferior``, the lower CI bound of the paired
   difference must lie above ``-margin`` (for BBQ: disambiguated and ambiguous accuracy, margin 0.05);
3. **not a swap**: where ``swap`` is given, the rise in ``swap.statistic`` (the anti-stereotyped
   answers) must stay below ``swap.share`` times the fall in the primary statistic; a method that only
   moves answers from one person to the other is reported, never chosen;
4. among the methods that pass, the largest reduction wins; on a tie (equal to 1e-9), fewer tokens per
   item; if none passes, there is no teacher (``fallback: null``) and no student is trained.

Every candidate's numbers and verdicts are returned, for ``teacher_choice.json`` and the report.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from .errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StatisticRef(_Strict):
    benchmark: str = Field(description="the study's benchmark id whose comparison holds the statistic")
    cell: str = Field(description="the comparison's cell (condition), e.g. ambig")
    statistic: str = Field(description="the comparison's metric, e.g. stereotyped_rate or accuracy")


class NonInferior(StatisticRef):
    margin: float = Field(0.05, gt=0, description="the lower CI bound of the difference must be above -margin")


class SwapCheck(StatisticRef):
    share: float = Field(0.5, gt=0, description="rejected when the rise in this statistic is at least this share "
                                                "of the primary statistic's fall")


class TeacherRule(_Strict):
    version: int = 2
    candidates: list[str] = Field(min_length=1, description="method keys (the study's method names or ids)")
    primary: StatisticRef
    noninferior: list[NonInferior] = Field(default_factory=list)
    swap: SwapCheck | None = None
    fallback: str | None = Field(None, description="method used when none qualifies; null: train no student")


def _difference(comp: dict[str, Any], ref: StatisticRef) -> dict[str, Any] | None:
    for r in comp.get("rows") or []:
        if r.get("run") == "difference" and r.get("metric") == ref.statistic and r.get("condition") == ref.cell:
            if r.get("value") is None:
                return None
            return {"value": r["value"], "ci": [r.get("ci_low"), r.get("ci_high")], "p_value": r.get("p_value"),
                    "n": r.get("n")}
    return None


def _tokens(comps: list[dict[str, Any]]) -> float | None:
    vals = [((c.get("cost") or {}).get("tokens_per_item") or {}).get("method") for c in comps]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def judge(rule: TeacherRule, comparison: Callable[[str, str], dict[str, Any] | None]) -> dict[str, Any]:
    """Apply ``rule``. ``comparison(method_key, benchmark_id)`` returns that comparison (or None when it
    has not been run). Returns ``{"method", "reason", "candidates", "rule"}``; ``method`` is None when no
    candidate qualifies and the rule has no fallback."""
    needed = [rule.primary.benchmark] + [n.benchmark for n in rule.noninferior] + \
        ([rule.swap.benchmark] if rule.swap else [])
    missing = [f"{m} on {b}" for m in rule.candidates for b in dict.fromkeys(needed) if comparison(m, b) is None]
    if missing:
        raise UserError(f"the teacher rule reads every candidate's comparison; not yet compared: {', '.join(missing)} "
                        "(run them first)")
    rows = []
    for m in rule.candidates:
        comps = {b: comparison(m, b) for b in dict.fromkeys(needed)}
        prim = _difference(comps[rule.primary.benchmark], rule.primary)
        row: dict[str, Any] = {"method": m, "primary": prim, "tokens_per_item": _tokens(list(comps.values())),
                               "noninferior": [], "checks": {}}
        row["checks"]["primary"] = bool(prim and prim["ci"][1] is not None and prim["ci"][1] < 0)
        ok_ni = True
        for ni in rule.noninferior:
            d = _difference(comps[ni.benchmark], ni)
            passed = bool(d and d["ci"][0] is not None and d["ci"][0] > -ni.margin)
            row["noninferior"].append({"benchmark": ni.benchmark, "cell": ni.cell, "statistic": ni.statistic,
                                       "margin": ni.margin, "difference": d, "passed": passed})
            ok_ni &= passed
        row["checks"]["noninferior"] = ok_ni
        if rule.swap is not None:
            d = _difference(comps[rule.swap.benchmark], rule.swap)
            fall = -prim["value"] if prim else 0.0
            rise = d["value"] if d else 0.0
            row["swap"] = {"statistic": rule.swap.statistic, "difference": d, "share": rule.swap.share}
            row["checks"]["not_a_swap"] = not (fall > 0 and rise >= rule.swap.share * fall)
        row["qualifies"] = all(row["checks"].values())
        rows.append(row)
    rule_dump = rule.model_dump()
    passing = [r for r in rows if r["qualifies"]]
    if passing:
        best = min(passing, key=lambda r: (round(r["primary"]["value"], 9), r["tokens_per_item"] or float("inf")))
        p = best["primary"]
        return {"method": best["method"], "candidates": rows, "rule": rule_dump,
                "reason": f"largest {rule.primary.statistic} reduction among {len(passing)} qualifying "
                          f"({len(rows)} candidates): {p['value']:+.3f} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}] "
                          f"on {rule.primary.benchmark}"}
    why = "; ".join(f"{r['method']}: fails " + ", ".join(k for k, v in r["checks"].items() if not v) for r in rows)
    return {"method": rule.fallback, "candidates": rows, "rule": rule_dump,
            "reason": f"no candidate qualifies ({why})" +
                      (f": the fallback {rule.fallback}" if rule.fallback else ": no teacher, no student")}


def comparison_reader(folder_of: Callable[[str, str], Path]) -> Callable[[str, str], dict[str, Any] | None]:
    """``comparison(method, benchmark)`` over run folders: ``folder_of(method, benchmark)/comparison.json``."""
    def read(method: str, benchmark: str) -> dict[str, Any] | None:
        p = folder_of(method, benchmark) / "comparison.json"
        return json.loads(p.read_text()) if p.exists() else None
    return read


__all__ = ["TeacherRule", "StatisticRef", "NonInferior", "SwapCheck", "judge", "comparison_reader"]
