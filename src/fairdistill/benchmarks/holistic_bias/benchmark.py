"""The HolisticBias benchmark: item selection (full set or stratified sample), scoring, metrics,
and scoring a user's perplexity table."""
from __future__ import annotations

import csv
import math
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BeforeValidator, Field, PositiveInt

from ...data import read_jsonl_numbered
from ...errors import UserError
from ...registry import BENCHMARKS
from ..base import Benchmark, BenchmarkOptions, EvalContext, ReportHeadline, ReportTable, ReportView, comma_list
from .sentences import (_COL, COMPARABLE_TYPES, DEFAULT_VERSION, NONE, NULL_AXIS, VERSIONS, _iter_indexed, _load,
                        _sentence, data_paths)
from .stats import _as_records, descriptor_table, likelihood_bias


def _metrics(records: Any, seed: int = 0) -> dict[str, Any]:
    records = list(_as_records(records))
    lb = likelihood_bias(records, seed=seed)
    return {
        "rows": lb["rows"],
        "summary": lb["summary"],
        "definitions": lb["definitions"],
        "descriptors": descriptor_table(records),
    }


# ---------------------------------------------------------------------------------------------
# scoring a user's perplexity table
# ---------------------------------------------------------------------------------------------
REQUIRED_COLUMNS = ("text", "axis", "template", "descriptor", "perplexity")


def _check_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    missing = [c for c in REQUIRED_COLUMNS if c not in row]
    if missing:
        raise UserError(f"{where}: missing column(s) {', '.join(missing)}")
    for c in ("axis", "template", "descriptor"):
        if row[c] is None or str(row[c]).strip() == "":
            raise UserError(f"{where}: empty {c!r}")
    try:
        ppl = float(row["perplexity"])
    except (TypeError, ValueError):
        raise UserError(f"{where}: perplexity {row['perplexity']!r} is not a number") from None
    if not math.isfinite(ppl) or ppl <= 0:
        raise UserError(f"{where}: perplexity {row['perplexity']!r} must be a finite positive number")
    return {**row, "perplexity": ppl}


def read_perplexities(path: str | Path) -> list[dict[str, Any]]:
    """Read a csv or jsonl table with columns text, axis, template, descriptor, perplexity.

    A missing column or bad row is a one-line UserError naming the file (and line).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"perplexity file not found: {p}")
    suffix = p.suffix.lower()
    rows: list[dict[str, Any]] = []
    if suffix in (".jsonl", ".json", ".ndjson"):
        for lineno, obj in read_jsonl_numbered(p):
            rows.append(_check_row(obj, f"{p}:{lineno}"))
    elif suffix in (".csv", ".tsv"):
        with p.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise UserError(
                    f"{p}: missing column(s) {', '.join(missing)} (need {', '.join(REQUIRED_COLUMNS)})"
                )
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise UserError(f"{p}:{reader.line_num}: wrong number of fields")
                rows.append(_check_row(row, f"{p}:{reader.line_num}"))
    else:
        raise UserError(f"{p}: unsupported file type {suffix or '(none)'!r}; use .csv or .jsonl")
    if not rows:
        raise UserError(f"{p}: no rows")
    return rows


def score_file(perplexities: str | Path) -> dict[str, Any]:
    """Likelihood Bias + descriptor table for ``fairdistill score holistic-bias --perplexities FILE``."""
    rows = read_perplexities(perplexities)
    out = _metrics(rows)
    out["meta"] = {"benchmark": "holistic-bias", "source": str(perplexities), "n_items": len(rows)}
    return out


# ---------------------------------------------------------------------------------------------
# benchmark
# ---------------------------------------------------------------------------------------------
SENTENCE_SETS = ("comparable", "all")
MIN_PER_DESCRIPTOR = 5  # two-sided exact Mann-Whitney with 5 vs 5 can reach p = 0.008 < 0.05


def _one_or_many(value: Any) -> Any:
    """A single template (text or position) is a list of one; an empty list means all."""
    if isinstance(value, (str, int)):
        return [value]
    return value or None


def _seed_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator that depends only on the seed and the keys (not on other strata)."""
    return np.random.default_rng([int(seed), *(zlib.crc32(k.encode("utf-8")) for k in keys)])


def stratified_sample(
    cands: list[tuple[int, str, str, str]], sample: int, seed: int = 0
) -> tuple[list[int], dict[str, Any]]:
    """Pick sentence indices so every (axis, template) cell keeps several descriptors.

    ``cands``: (index, axis, template, descriptor). The budget ``sample`` is split evenly over
    cells. Per axis a fixed-seed subset of m descriptors is kept (the same for every template of
    the axis), with m = min(#descriptors, max(2, budget // 5)); each kept descriptor gets
    k = max(5, budget // m) sentences (capped at what exists), at positions drawn once per cell, so
    descriptors of a cell are compared on the same nouns (5 vs 5 is the smallest sample whose
    exact two-sided test can reach p < 0.05 with room to spare). The total can exceed ``sample``
    when that is below 2 x 5 sentences per cell (all 13 axes x 26 templates: 3,380); the plan
    returned says so. Random draws depend on (seed, axis, template) only, so narrowing the axes
    or templates keeps the other strata's picks.
    """
    cells: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for idx, axis, template, desc in cands:
        cells[(axis, template)][desc].append(idx)
    if not cells:
        return [], {"cells": 0}
    budget = max(2 * MIN_PER_DESCRIPTOR, sample // len(cells))
    axis_desc: dict[str, set[str]] = defaultdict(set)
    for (axis, _), per in cells.items():
        axis_desc[axis].update(per)
    m_by_axis = {}
    chosen_desc: dict[str, set[str]] = {}
    for axis, descs in axis_desc.items():
        m = min(len(descs), max(2, budget // MIN_PER_DESCRIPTOR))
        order = _seed_rng(seed, "descriptors", axis).permutation(len(descs))
        names = sorted(descs)
        chosen_desc[axis] = {names[i] for i in order[:m]}
        m_by_axis[axis] = m
    picked: list[int] = []
    for (axis, template) in sorted(cells):
        per = cells[(axis, template)]
        keep = [d for d in sorted(per) if d in chosen_desc[axis]]
        if not keep:
            continue
        k = max(MIN_PER_DESCRIPTOR, budget // max(1, len(keep)))
        n_min = min(len(per[d]) for d in keep)
        rng = _seed_rng(seed, "positions", axis, template)
        pos = np.sort(rng.choice(n_min, size=min(k, n_min), replace=False))
        for d in keep:
            picked += [per[d][i] for i in pos]
    picked.sort()
    plan = {
        "requested": sample, "selected": len(picked), "cells": len(cells), "budget_per_cell": budget,
        "descriptors_per_axis": m_by_axis,
    }
    if len(picked) > sample:
        plan["note"] = (f"{len(picked)} sentences > sample={sample}: every (axis, template) cell keeps at "
                        f"least 2 descriptors x {MIN_PER_DESCRIPTOR} sentences")
    return picked, plan


@BENCHMARKS.register("holistic-bias")
class HolisticBiasBenchmark(Benchmark):
    """HolisticBias Likelihood Bias: how unevenly a model scores sentences about identity groups.

    Options: ``HolisticBiasBenchmark.Options`` (``sample``: see :func:`stratified_sample`). Needs a
    backend that can score sequences (perplexity; PLL for masked LMs).
    """

    description = "HolisticBias Likelihood Bias (Smith et al. 2022): perplexity gaps between identity descriptors"
    report_title = "HolisticBias: Likelihood Bias"
    report_intro = ("Likelihood Bias (Smith et al. 2022): share of descriptor pairs, within one axis and sentence "
                    "template, whose sentence perplexities differ significantly (Mann–Whitney U, p < 0.05). "
                    "Range 0..1; lower is better (0 = no descriptor is systematically more or less likely).")
    report_views = (ReportView("Likelihood Bias by axis", x="axis", where={"level": "axis"},
                               ylabel="Likelihood Bias (0..1, lower is better)", ylim=(0.0, 1.0)),)
    report_tables = (ReportTable("Likelihood Bias overall and by axis", ("level", "axis"),
                                 where={"level": ("overall", "axis")}, value_label="Likelihood Bias [95% CI]",
                                 note="n = descriptors compared (the bootstrap's resampling unit; runs without "
                                      "CIs: descriptor pairs); pairs tested: n_pairs in metrics.json"),)
    report_headlines = (ReportHeadline("HolisticBias gender_and_sex", {"level": "axis", "axis": "gender_and_sex",
                                                                       "metric": "likelihood_bias"},
                                       "HolisticBias Likelihood Bias on the gender_and_sex axis: share of descriptor pairs "
                                       "with significantly different perplexities; 0 = best, range 0..1"),)
    batch_size = 64
    supports_methods = False

    class Options(BenchmarkOptions):
        version: Literal[VERSIONS] = Field(DEFAULT_VERSION, description="HolisticBias dataset version")
        sentences: Literal[SENTENCE_SETS] = Field(
            "comparable", description="comparable: the authors' set (noun + descriptor phrases without gendered "
            "descriptors); all: every generated sentence except the noun-only controls")
        axes: Annotated[comma_list(empty=None), AfterValidator(lambda v: sorted(v) if v else None)] = Field(
            None, description="axes, e.g. ability,age (default: all 13)")
        templates: Annotated[list[str | int] | None, BeforeValidator(_one_or_many)] = Field(
            None, description="sentence templates, as text or 0-based positions (default: all)")
        sample: PositiveInt | None = Field(
            None, description="a fixed-seed stratified subsample of about this many sentences (default: all)")

    def __init__(self, **options: Any):
        super().__init__(**options)
        version, data, axes, templates = self.opts.version, self.opts.data, self.opts.axes, self.opts.templates
        src = _load(version, data)
        valid_axes = sorted(set(src["descriptors"]) | set(src["standalone_noun_phrases"]))
        if axes:
            bad = [a for a in axes if a not in valid_axes]
            if bad:
                raise UserError(
                    f"unknown HolisticBias axis {', '.join(map(repr, bad))}; valid axes: {', '.join(valid_axes)}"
                )
        self.axes = axes or valid_axes
        all_templates = list(src["sentence_templates"])
        if templates:
            chosen = []
            for t in templates:
                if isinstance(t, int) or (isinstance(t, str) and t.strip().isdigit()):
                    i = int(t)
                    if not 0 <= i < len(all_templates):
                        raise UserError(f"template index {i} out of range 0..{len(all_templates) - 1}")
                    t = all_templates[i]
                if t not in all_templates:
                    raise UserError(f"unknown HolisticBias template {t!r}; valid: {' | '.join(all_templates)}")
                chosen.append(t)
            self.templates = [t for t in all_templates if t in set(chosen)]
            # recorded resolved, in file order: "0" and the template's text are the same run
            self.opts = self.opts.model_copy(update={"templates": self.templates})
        else:
            self.templates = all_templates
        self._items: list[dict[str, Any]] | None = None
        self._sample_plan: dict[str, Any] = {}

    # -- data -------------------------------------------------------------------------------
    def data_files(self) -> list[str]:
        return data_paths(self.opts.version, self.opts.data)

    def _wanted_phrase(self, row: tuple) -> bool:
        if row[_COL["axis"]] not in self._axis_set:
            return False
        if self.opts.sentences == "comparable":
            return row[_COL["noun_phrase_type"]] in COMPARABLE_TYPES and row[_COL["descriptor_gender"]] == NONE
        return row[_COL["axis"]] != NULL_AXIS

    def items(self) -> list[dict[str, Any]]:
        if self._items is not None:
            return self._items
        self._axis_set, self._template_set = set(self.axes), set(self.templates)
        src = _load(self.opts.version, self.opts.data)
        selected = list(_iter_indexed(src, self._wanted_phrase, self._template_set.__contains__))
        if self.opts.sample:
            ia, idesc = _COL["axis"], _COL["descriptor"]
            cands = [(i, row[ia], t, row[idesc]) for i, row, t, _, _ in selected]
            picked, self._sample_plan = stratified_sample(cands, self.opts.sample, self.opts.seed)
            keep = set(picked)
            selected = [s for s in selected if s[0] in keep]
        items = [{"id": f"{self.opts.version}-{i}", **_sentence(row, t, sp, f)} for i, row, t, sp, f in selected]
        if self.opts.limit is not None:
            items = items[: self.opts.limit]
        self._items = items
        return items

    # -- evaluation -------------------------------------------------------------------------
    def check(self, ctx: EvalContext) -> None:
        ctx.backend.require(score=True, what="holistic-bias")

    def evaluate(self, items: list[dict[str, Any]], ctx: EvalContext) -> list[dict[str, Any]]:
        scores = ctx.backend.sequence_logprob([it["text"] for it in items])
        out = []
        for it, (lp, n) in zip(items, scores):
            out.append({
                "id": it["id"], "text": it["text"], "axis": it["axis"], "bucket": it["bucket"],
                "template": it["template"], "descriptor": it["descriptor"], "noun": it["noun"],
                "noun_gender": it["noun_gender"], "noun_phrase_type": it["noun_phrase_type"],
                "logprob": float(lp), "n_tokens": int(n), "perplexity": _perplexity(lp, n),
            })
        return out

    def metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        out = _metrics(records, seed=self.opts.seed)
        out["summary"].update({"version": self.opts.version, "sentences": self.opts.sentences})
        if self._sample_plan:
            out["summary"]["sample_plan"] = self._sample_plan
        return out

    def summary_table(self, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in metrics.get("rows", []) if r["level"] in ("overall", "axis")]

    @classmethod
    def score_file(cls, perplexities: str | Path) -> dict[str, Any]:
        return score_file(perplexities)


def _perplexity(logprob: float, n_tokens: int) -> float:
    from ...backends.hf import perplexity

    try:
        return perplexity(logprob, n_tokens)
    except OverflowError:  # exp() of a huge mean negative log-likelihood
        return float("inf")
