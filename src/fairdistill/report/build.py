"""Build the HTML report and the Markdown summary from run directories.

Input: any run directories (``config.json`` + ``metrics.json``, optionally ``comparison.json``).
Runs of the same benchmark are shown side by side in the order given (e.g. base model, then the
debiased or distilled one); deltas are "this run minus the first run of that benchmark".

Sections: the mitigations side by side (one line per model or mitigation, the headline numbers
each benchmark declares in ``report_headlines``, and what each mitigation cost), one per benchmark
(BBQ, HolisticBias, B-score, capability have their own layout, any other benchmark gets its tidy
rows as a table), paired comparisons (``comparison.json``), and the run configuration (model, method, seeds, options, versions, data hashes). Every table is followed
by the definitions the benchmark wrote into its metrics (what each number is, its range, which
direction is better).
"""
from __future__ import annotations

import dataclasses

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError
from . import charts

SECRET_MARKERS = ("key", "token", "secret", "password", "passwd", "credential", "auth")
MAX_TABLE_ROWS = 400
BIAS_RANGE = "−1..1, 0 = no bias"


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    path: Path
    label: str
    benchmark: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    comparison: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def definitions(self) -> dict[str, str]:
        d = self.metrics.get("definitions") or {}
        return {str(k): str(v) for k, v in d.items()} if isinstance(d, dict) else {}


def redact(obj: Any) -> Any:
    """Drop every mapping entry whose key looks like a credential (key/token/secret/...)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            lk = str(k).lower()
            # "tokenizer"/"max_tokens"-style keys are not secrets; "api_key", "hf_token" are
            if any(m in lk for m in SECRET_MARKERS) and not _harmless_key(lk):
                out[k] = "[redacted]"
            else:
                out[k] = redact(v)
        return out
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str):  # a URL's userinfo or ?api_key= (runs written before they were stripped at the source)
        from ..redaction import redact_urls

        return redact_urls(obj)
    return obj


def _harmless_key(k: str) -> bool:
    harmless = ("tokenizer", "tokens", "token_id", "tokenization", "tokenisation", "n_token", "num_token",
                "max_token", "new_token", "author")
    return any(h in k for h in harmless) and not any(s in k for s in ("api_key", "secret", "password", "access_token", "hf_token", "auth_token"))


def _read_json(p: Path) -> dict[str, Any]:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _model_of(cfg: dict) -> str:
    ident = cfg.get("identity") or {}
    m = ident.get("model")
    if isinstance(m, dict):
        m = m.get("model") or m.get("name")
    return str(cfg.get("model_spec") or m or "model")


def _intervention_of(cfg: dict) -> str | None:
    m = (cfg.get("identity") or {}).get("model")
    iv = m.get("intervention") if isinstance(m, dict) else None
    return str(iv.get("intervention")) if isinstance(iv, dict) and iv.get("intervention") else None


def _method_of(cfg: dict) -> str | None:
    ident = cfg.get("identity") or {}
    m = ident.get("method")
    if isinstance(m, dict):
        m = m.get("method") or m.get("name") or json.dumps(m, sort_keys=True)
    return str(m) if m else None


def load_run(path: str | Path, label: str | None = None) -> Run:
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"run directory not found: {p}")
    if not (p / "metrics.json").exists():
        raise UserError(f"no metrics.json in {p}: the run has not finished (rerun its command to resume)")
    cfg = _read_json(p / "config.json") if (p / "config.json").exists() else {}
    metrics = _read_json(p / "metrics.json")
    bench = str((metrics.get("meta") or {}).get("benchmark") or (cfg.get("identity") or {}).get("benchmark") or p.name)
    comp = _read_json(p / "comparison.json") if (p / "comparison.json").exists() else None
    if label is None:
        label = str(cfg.get("label") or "")
    if not label:
        model = Path(_model_of(cfg).rstrip("/")).name or _model_of(cfg)
        label = model + "".join(f" + {x}" for x in (_intervention_of(cfg), _method_of(cfg)) if x)
    return Run(path=p, label=label, benchmark=bench, config=redact(cfg), metrics=redact(metrics),
               comparison=redact(comp) if comp is not None else None)


def load_runs(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[Run]:
    if not run_dirs:
        raise UserError("no run directories given")
    if labels is not None and len(labels) != len(run_dirs):
        raise UserError(f"{len(labels)} labels for {len(run_dirs)} run directories")
    runs: list[Run] = []
    for i, d in enumerate(run_dirs):
        study = Path(d) / "study.json"
        if study.exists() and not (Path(d) / "metrics.json").exists():  # a study folder: all its runs
            listed = _read_json(study).get("runs") or []
            runs += [load_run(r["dir"], r.get("label")) for r in listed]
        else:
            runs.append(load_run(d, labels[i] if labels else None))
    # unique labels within a benchmark (two runs of one model: add the folder name); the comparison of
    # mitigations groups runs by the label as given
    seen: dict[tuple[str, str], int] = {}
    for r in runs:
        r.extra["system"] = r.label
        seen[(r.benchmark, r.label)] = seen.get((r.benchmark, r.label), 0) + 1
    for r in runs:
        if seen[(r.benchmark, r.label)] > 1:
            r.label = f"{r.label} ({r.path.name})"
    return runs


# ---------------------------------------------------------------------------------------------
# formatting helpers
# ---------------------------------------------------------------------------------------------
def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "—"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 10 ** -digits):
            return f"{x:.{digits}g}"
        if abs(x) >= 10:  # percentages (CrowS-Pairs, StereoSet), seconds: a tenth is their precision here
            return f"{x:,.1f}"
        return f"{x:.{digits}f}"
    if isinstance(x, (dict, list)):
        s = json.dumps(x, default=str)
        return s if len(s) <= 120 else s[:117] + "..."
    return str(x)


def fmt_ci(value: Any, lo: Any, hi: Any) -> str:
    if not _num(value):
        return fmt(value)
    if _num(lo) and _num(hi):
        if 10 <= max(abs(value), abs(lo), abs(hi)) < 1e5:  # fmt's one decimal, for the value and its interval alike
            return f"{value:,.1f} [{lo:,.1f}, {hi:,.1f}]"
        return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"
    return fmt(value)


def fmt_delta(d: Any) -> str:
    if not _num(d):
        return "—"
    return f"{d:+.3f}"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    truncated: int = 0
    numeric: list[bool] = field(default_factory=list)

    def __post_init__(self):
        if not self.numeric:
            self.numeric = [False] * len(self.columns)


def table_from_dicts(title: str, rows: list[dict[str, Any]], note: str = "", columns: list[str] | None = None,
                     max_rows: int = MAX_TABLE_ROWS) -> Table:
    cols = list(columns or [])
    if not cols:
        for r in rows:
            for k in r:
                if k not in cols and not isinstance(r[k], (dict, list)):
                    cols.append(k)
    body = [[fmt(r.get(c)) for c in cols] for r in rows[:max_rows]]
    numeric = [any(_num(r.get(c)) for r in rows[:50]) for c in cols]
    return Table(title, cols, body, note, max(0, len(rows) - max_rows), numeric)


VALUE_FIELDS = {"value", "ci_low", "ci_high", "stderr", "n"}


def side_by_side(title: str, runs: list[Run], rows_of, keys: list[str], note: str = "",
                 show_delta: bool = True, value_label: str = "value [95% CI]") -> Table:
    """Pivot tidy rows of several runs: one line per key, per run ``value [lo, hi]`` and n."""
    index: dict[tuple, dict[int, dict]] = {}
    for i, r in enumerate(runs):
        for row in rows_of(r):
            k = tuple(row.get(c) for c in keys)
            index.setdefault(k, {})[i] = row
    cols = list(keys)
    for i, r in enumerate(runs):
        cols += [f"{r.label}: {value_label}", f"{r.label}: n"]
        if show_delta and i > 0:
            cols.append(f"Δ {r.label} − {runs[0].label}")
    body = []
    for k, per in list(index.items())[:MAX_TABLE_ROWS]:
        line = [fmt(x) for x in k]
        for i in range(len(runs)):
            row = per.get(i)
            if row is None:
                line += ["—", "—"]
            else:
                line += [fmt_ci(row.get("value"), row.get("ci_low"), row.get("ci_high")),
                         fmt(row.get("n", row.get("n_pairs", row.get("n_questions"))))]
            if show_delta and i > 0:
                a, b = per.get(0, {}).get("value"), (row or {}).get("value")
                line.append(fmt_delta(b - a) if _num(a) and _num(b) else "—")
        body.append(line)
    numeric = [False] * len(keys) + [True] * (len(cols) - len(keys))
    return Table(title, cols, body, note, max(0, len(index) - MAX_TABLE_ROWS), numeric)


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------
@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    charts: list[tuple[str, str]] = field(default_factory=list)  # (caption, svg)
    tables: list[Table] = field(default_factory=list)
    definitions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    transcripts: list[tuple[str, list[dict[str, str]]]] = field(default_factory=list)  # (caption, turns)


def _defs(runs: list[Run], extra: dict[str, str] | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in runs:
        for k, v in r.definitions.items():
            out.setdefault(k, v)
    for k, v in (extra or {}).items():
        out.setdefault(k, v)
    return out


def _rows(run: Run) -> list[dict[str, Any]]:
    rows = run.metrics.get("rows")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _match(row: dict, where: dict) -> bool:
    for k, v in where.items():
        if (row.get(k) not in v) if isinstance(v, tuple) else (row.get(k) != v):
            return False
    return True


def _ordered(values: list) -> list:
    """Distinct values, sorted, with "overall"/"all" last (the aggregate after its parts)."""
    uniq = sorted({v for v in values if v is not None}, key=str)
    return [v for v in uniq if v not in ("overall", "all")] + [v for v in uniq if v in ("overall", "all")]


MAX_BAR_SERIES = 12  # more runs than this: a benchmark's chart is a heat map (runs x groups), not bars


def _value_range(values: list[float], symmetric: bool) -> tuple[float, float]:
    """Colour limits for a heat map: around 0 when the metric's zero means "no bias"."""
    if not values:
        return (0.0, 1.0)
    if symmetric:
        m = max(abs(v) for v in values) or 1.0
        return (-m, m)
    lo, hi = min(values), max(values)
    return (lo, hi if hi > lo else lo + 1.0)


def _view_charts(view, runs: list[Run]) -> list[tuple[str, str]]:
    """The bar chart(s) of one declared view: one per facet value, and the deltas when asked."""
    out = []
    matching = {id(r): [row for row in _rows(r) if _match(row, view.where)] for r in runs}
    facets = _ordered([row.get(view.facet) for r in runs for row in matching[id(r)]]) if view.facet else [None]
    for fv in facets:
        rows_of = {id(r): [row for row in matching[id(r)] if view.facet is None or row.get(view.facet) == fv]
                   for r in runs}
        xs = _ordered([row.get(view.x) for r in runs for row in rows_of[id(r)]])
        if not xs:
            continue

        def pick(r: Run, key: str) -> list:
            by = {row.get(view.x): row for row in rows_of[id(r)]}
            return [by.get(x, {}).get(key) for x in xs]

        suffix = f", {view.facet} = {fv}" if view.facet else ""
        if len(runs) > MAX_BAR_SERIES:  # a study's 90 runs as bars is a wall of colours; a grid stays legible
            shown = [r for r in runs if any(_num(v) for v in pick(r, "value"))]  # no empty rows (other conditions)
            cells = {(r.label, str(x)): v for r in shown for x, v in zip(xs, pick(r, "value"))}
            lo, hi = view.ylim or _value_range([v for v in cells.values() if _num(v)], view.zero_line)
            svg = charts.heatmap([r.label for r in shown], [str(x) for x in xs], cells,
                                 title=view.title + suffix, cbar_label=view.ylabel, vmin=lo, vmax=hi,
                                 cmap="RdBu_r" if view.zero_line else "viridis")
            if svg:
                out.append((f"{view.title}{suffix}: one row per run ({len(shown)} runs, too many for bars; "
                            "the 95% CIs are in the tables)", svg))
            continue
        svg = charts.grouped_bars([str(x) for x in xs], {r.label: pick(r, "value") for r in runs},
                                  lows={r.label: pick(r, "ci_low") for r in runs},
                                  highs={r.label: pick(r, "ci_high") for r in runs},
                                  title=view.title + suffix, ylabel=view.ylabel, ylim=view.ylim,
                                  zero_line=view.zero_line)
        if svg:
            out.append((f"{view.title}{suffix}: one bar per run, whiskers = 95% CI", svg))
        if view.delta and len(runs) > 1:
            base = pick(runs[0], "value")
            deltas = {r.label: [(b - a) if _num(a) and _num(b) else None for a, b in zip(base, pick(r, "value"))]
                      for r in runs[1:]}
            svg = charts.grouped_bars([str(x) for x in xs], deltas, title=f"{view.title}{suffix}: change vs {runs[0].label}",
                                      ylabel="Δ (this run − the first)", zero_line=True)
            if svg:
                out.append((f"{view.title}{suffix}: each run minus {runs[0].label}", svg))
    return out


def _row_keys(rows: list[dict]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in VALUE_FIELDS and k not in keys and not _num(v) and not isinstance(v, (dict, list)):
                keys.append(k)
    return keys


def section_for(bench: str, runs: list[Run]) -> Section:
    """A benchmark's section from its tidy rows and the views it declares (``Benchmark.report_views``,
    ``report_tables``); a benchmark without views gets one chart of every row and one table."""
    from ..registry import BENCHMARKS

    try:
        cls = BENCHMARKS.get(bench)
    except Exception:  # a run of a benchmark this installation does not have: rows only
        cls = None
    s = Section(bench, getattr(cls, "report_title", "") or bench,
                getattr(cls, "report_intro", "") or "Tidy metric rows as written by the benchmark; definitions below.")
    views = getattr(cls, "report_views", ())
    tables = getattr(cls, "report_tables", ())
    for view in views:
        s.charts.extend(_view_charts(view, runs))
    all_rows = [row for r in runs for row in _rows(r)]
    keys = _row_keys(all_rows)
    if not views and keys and all_rows and "value" in {k for row in all_rows for k in row} and len(_rows(runs[0])) <= 40:
        from ..benchmarks.base import ReportView

        labelled = [dataclasses.replace(r, metrics={**r.metrics, "rows": [
            {**row, "_label": " / ".join(str(row.get(k)) for k in keys if row.get(k) is not None)}
            for row in _rows(r)]}) for r in runs]
        s.charts.extend(_view_charts(ReportView(f"{bench}: value per row", x="_label"), labelled))
    for t in tables or ():
        if any(_match(row, t.where) for row in all_rows):
            s.tables.append(side_by_side(t.title, runs, lambda r, t=t: [row for row in _rows(r) if _match(row, t.where)],
                                         list(t.keys), value_label=t.value_label, note=t.note))
    if not tables and all_rows:
        if "value" in {k for row in all_rows for k in row}:
            s.tables.append(side_by_side(f"{bench} metrics", runs, _rows, keys))
        else:
            for r in runs:
                s.tables.append(table_from_dicts(f"{r.label}: metrics", _rows(r)))
    _sub_tables(s, runs)
    for r in runs:
        c = r.metrics.get("counts")
        if isinstance(c, dict):
            s.notes.append(f"{r.label}: " + ", ".join(f"{k} = {fmt(v)}" for k, v in c.items() if k != "note"))
            if c.get("note"):
                s.definitions.setdefault("counts", str(c["note"]))
    extra = EXTRAS.get(bench)
    if extra:
        extra(s, runs)
    if not tables and not views:
        for r in runs:
            summ = r.metrics.get("summary")
            if isinstance(summ, dict) and summ:
                s.tables.append(table_from_dicts(f"{r.label}: summary", [{"quantity": k, "value": v}
                                                 for k, v in summ.items() if not isinstance(v, (dict, list))]))
    s.definitions.update(_defs(runs))
    return s


def _sub_tables(s: Section, runs: list[Run]) -> None:
    """Tidy rows a benchmark files under a sub-key of its metrics (e.g. BBQ's ``position``), and their warnings."""
    subs: list[str] = []
    for r in runs:
        for k, v in r.metrics.items():
            if isinstance(v, dict) and isinstance(v.get("rows"), list) and k not in subs:
                subs.append(k)
    for k in subs:
        have = [r for r in runs if isinstance(r.metrics.get(k), dict)]
        rows = [row for r in have for row in r.metrics[k]["rows"]]
        title = next((r.metrics[k].get("title") for r in have if r.metrics[k].get("title")), k)
        s.tables.append(side_by_side(title, have, lambda r, k=k: r.metrics[k].get("rows", []), _row_keys(rows),
                                     note=next((r.metrics[k].get("note", "") for r in have), "")))
        for r in have:
            if r.metrics[k].get("warning"):
                s.notes.append(f"{r.label}: {r.metrics[k]['warning']}")
    for r in runs:  # one-line notes a benchmark attaches to its metrics (e.g. CBBQ's missing data)
        s.notes += [f"{r.label}: {line}" for line in r.metrics.get("notes") or []]


# -- what a benchmark adds to its section (beyond tidy rows) -----------------------------------------
def holistic_extras(s: Section, runs: list[Run]) -> None:
    for r in runs:
        cells = {(str(row.get("axis")), str(row.get("template"))): row.get("value")
                 for row in _rows(r) if row.get("level") == "axis_template"}
        if cells:
            svg = charts.heatmap(sorted({a for a, _ in cells}), sorted({t for _, t in cells}), cells,
                                 title=f"Likelihood Bias, axis × template — {r.label}",
                                 cbar_label="Likelihood Bias (0..1, lower is better)")
            if svg:
                s.charts.append((f"{r.label}: Likelihood Bias per axis (rows) and template (columns); grey = no pair", svg))
        desc = r.metrics.get("descriptors")
        if not isinstance(desc, dict):
            continue
        if desc.get("gaps"):
            s.tables.append(table_from_dicts(
                f"{r.label}: descriptors with the largest perplexity gaps, per axis", desc["gaps"][:15],
                note="lowest/highest = the axis's descriptors with the lowest and highest median sentence "
                     "perplexity; gap = highest − lowest median (≥ 0, smaller = more even), ratio = highest / lowest "
                     "(≥ 1, closer to 1 = more even)."))
        if desc.get("extremes"):
            s.tables.append(table_from_dicts(
                f"{r.label}: most and least likely descriptors (by median perplexity)", desc["extremes"][:60],
                note="median_perplexity: lower = the model finds sentences with this descriptor more likely."))
    s.definitions.update({"gap": "highest − lowest median perplexity among an axis's descriptors",
                          "ratio": "highest / lowest median perplexity among an axis's descriptors"})


def bscore_extras(s: Section, runs: list[Run]) -> None:
    for r in runs:
        pq = r.metrics.get("per_question") or [row for row in _rows(r) if row.get("level") == "question"]
        if pq:
            s.tables.append(table_from_dicts(f"{r.label}: per question", pq, max_rows=60))
        un = (r.metrics.get("summary") or {}).get("unparsed")
        if isinstance(un, dict):
            s.notes.append(f"{r.label}: unparsed answers " + ", ".join(f"{k} = {fmt(v)}" for k, v in un.items()))


def capability_extras(s: Section, runs: list[Run]) -> None:
    for r in runs:
        for k, v in (r.metrics.get("skipped") or {}).items():
            s.notes.append(f"{r.label}: task {k} skipped: {v}")
        v = (r.metrics.get("lm_eval") or {}).get("lm_eval_version")
        if v:
            s.notes.append(f"{r.label}: lm-eval {v}")


EXTRAS = {"holistic-bias": holistic_extras, "b-score": bscore_extras, "capability": capability_extras}


def section_comparisons(runs: list[Run]) -> Section | None:
    comps = [r for r in runs if r.comparison]
    if not comps:
        return None
    s = Section("comparisons", "Paired comparisons (same items, before vs after)",
                "Paired comparison of a method run against its baseline on the same items "
                "(comparison.json). The transition table counts how each item's answer moved between the "
                "two runs.")
    overview = comparison_overview(comps, runs)
    if overview:
        s.tables.append(table_from_dicts(
            "Every comparison at a glance: baseline and method with 95% CIs, the paired difference and its p-value",
            overview, note="one line per comparison, condition and statistic; cost per item from the records "
                           "(calls, tokens) and run times (seconds, where both runs were timed)"))
    for r in comps:
        c = r.comparison or {}
        head = f"{_baseline_label(c, runs)} → {r.label}"
        rows = c.get("rows")
        if isinstance(rows, list) and rows:
            s.tables.append(table_from_dicts(f"{head}: paired differences", [x for x in rows if isinstance(x, dict)]))
        tr = c.get("transitions")
        if isinstance(tr, list) and tr:
            s.tables.append(table_from_dicts(f"{head}: transitions", [x for x in tr if isinstance(x, dict)]))
        elif isinstance(tr, dict) and tr:
            s.tables.append(transition_table(f"{head}: transitions of item correctness (baseline → method)", tr))
        summ = c.get("summary")
        if isinstance(summ, dict) and summ:
            s.tables.append(table_from_dicts(f"{head}: summary", [{"quantity": k, "value": v} for k, v in summ.items()
                                                                   if not isinstance(v, (dict, list))]))
        d = c.get("definitions")
        if isinstance(d, dict):
            for k, v in d.items():
                s.definitions.setdefault(str(k), str(v))
    return s


def _baseline_label(c: dict, runs: list[Run]) -> str:
    base_dir = ((c.get("runs") or {}).get("baseline") or {}).get("dir") if isinstance(c.get("runs"), dict) else None
    base = next((x.label for x in runs if base_dir and x.path.resolve() == Path(base_dir).resolve()), None)
    return base or c.get("base_label") or "baseline"


def comparison_overview(comps: list[Run], runs: list[Run]) -> list[dict[str, Any]]:
    """One row per comparison x condition x statistic: baseline, method, difference (CIs), p, transitions, cost."""
    out = []
    for r in comps:
        c = r.comparison or {}
        rows = [x for x in c.get("rows") or [] if isinstance(x, dict)]
        by = {(x.get("condition"), x.get("metric"), x.get("run")): x for x in rows}
        cost = c.get("cost") or {}
        for (cond, metric, run), d in by.items():
            if run != "difference":
                continue
            b, m = by.get((cond, metric, "baseline"), {}), by.get((cond, metric, "method"), {})
            tr = ((c.get("transitions") or {}).get(cond) or {}).get("counts") or {} if metric == "accuracy" else {}
            out.append({
                "method run": r.label, "baseline": _baseline_label(c, runs), "condition": cond, "statistic": metric,
                "baseline value": fmt_ci(b.get("value"), b.get("ci_low"), b.get("ci_high")),
                "method value": fmt_ci(m.get("value"), m.get("ci_low"), m.get("ci_high")),
                "difference": fmt_ci(d.get("value"), d.get("ci_low"), d.get("ci_high")), "p": d.get("p_value"),
                "fixed / broke": f"{tr.get('incorrect->correct')} / {tr.get('correct->incorrect')}" if tr else "",
                "calls/item": (cost.get("calls_per_item") or {}).get("method"),
                "tokens/item": (cost.get("tokens_per_item") or {}).get("method"),
                "seconds/item": (cost.get("seconds_per_item") or {}).get("method"), "n": d.get("n"),
                # baseline and method answered on machines whose numerics differ (CPU bf16 units, versions)
                "same machine": {True: "yes", False: "no"}.get(c.get("same_environment"), "not recorded"),
            })
    return out


def transition_table(title: str, tr: dict[str, Any]) -> Table:
    """Transitions per group (e.g. context condition): a 2x2 correctness table when the counts use
    ``a->b`` keys (correct->incorrect, ...), else one line per key."""
    cols = ["group", "baseline", "method: correct", "method: incorrect", "n"]
    body: list[list[str]] = []
    generic: list[dict[str, Any]] = []
    for group, v in tr.items():
        counts = v.get("counts") if isinstance(v, dict) else None
        pct = (v.get("percent") or {}) if isinstance(v, dict) else {}
        if isinstance(counts, dict) and all("->" in str(k) for k in counts):
            def cell(k: str) -> str:
                c = counts.get(k)
                return fmt(c) + (f" ({pct[k]:.1f}%)" if _num(pct.get(k)) else "")
            for b in ("correct", "incorrect"):
                body.append([str(group), b, cell(f"{b}->correct"), cell(f"{b}->incorrect"), fmt(v.get("n"))])
        elif isinstance(v, dict):
            generic.append({"group": group, **{k: x for k, x in v.items() if not isinstance(x, (dict, list))},
                            **({f"count {k}": x for k, x in counts.items()} if isinstance(counts, dict) else {})})
        else:
            generic.append({"group": group, "value": v})
    if generic and not body:
        return table_from_dicts(title, generic)
    return Table(title, cols, body, note="counts of items (share of the group's items); baseline correct -> method "
                                          "incorrect are items the method broke, incorrect -> correct items it fixed",
                 numeric=[False, False, True, True, True])


def run_config_rows(runs: list[Run]) -> list[dict[str, Any]]:
    out = []
    for r in runs:
        cfg = r.config
        ident = cfg.get("identity") or {}
        opts = {k: v for k, v in ident.items() if k not in ("model", "method", "benchmark")}
        out.append({
            "run": r.label,
            "benchmark": r.benchmark,
            "directory": str(r.path),
            "model": json.dumps(ident.get("model"), sort_keys=True, default=str) if isinstance(ident.get("model"), dict) else str(ident.get("model", _model_of(cfg))),
            "method": json.dumps(ident.get("method"), sort_keys=True, default=str) if ident.get("method") else "none",
            "seed": ident.get("seed", cfg.get("seed")),
            "options": json.dumps(opts, sort_keys=True, default=str),
            "versions": ", ".join(f"{k} {v}" for k, v in sorted((cfg.get("versions") or {}).items())),
            "data_sha256": cfg.get("data_sha256") or {},
            "command": cfg.get("command"),
            "n_items": cfg.get("n_items"),
            "extra": {k: v for k, v in cfg.items() if k not in ("identity", "versions", "data_sha256", "command",
                                                                 "n_items", "model_spec", "label")},
        })
    return out


def _cost(run: Run) -> str:
    """What the mitigation behind a run cost: training (study runs of a trained model record it) or an
    intervention's extra forward passes and estimation."""
    c = run.config.get("cost")
    if isinstance(c, dict) and c.get("steps") is not None:
        text = f"{c.get('training', 'training')}: {fmt(c['steps'])} steps"
        if _num(c.get("train_seconds")):
            text += f", {c['train_seconds']:,.0f} s"
        if _num(c.get("teacher_seconds")):
            text += f" (+ {c['teacher_seconds']:,.0f} s of teacher answers)"
        if c.get("teacher"):
            text += f"; teacher {c['teacher']}" + (f" ({c['teacher_reason']})" if c.get("teacher_reason") else "")
        return text
    iv = ((run.metrics.get("meta") or {}).get("backend_stats") or {}).get("intervention")
    if isinstance(iv, dict) and isinstance(iv.get("cost"), dict):
        ic = iv["cost"]
        n = ic.get("extra_forward_passes")
        text = (f"+{fmt(n)} forward pass{'es' if n != 1 else ''} per token") if n else "no extra forward pass"
        if ic.get("estimation_sentences"):
            text += f"; estimated once on {fmt(ic['estimation_sentences'])} sentences"
            if _num(ic.get("estimate_seconds")):
                text += f" ({ic['estimate_seconds']:,.{0 if ic['estimate_seconds'] >= 10 else 1}f} s)"
        return text
    cost = (run.comparison or {}).get("cost") or {}
    calls = (cost.get("calls_per_item") or {}).get("method")
    if _num(calls):  # an inference-time method: what each answer costs against the plain model's
        toks = (cost.get("tokens_per_item") or {}).get("method")
        base = (cost.get("calls_per_item") or {}).get("baseline")
        text = f"{fmt(calls, 1)} calls" + (f", {toks:,.0f} tokens" if _num(toks) else "") + " per item"
        return text + (f" (plain: {fmt(base, 1)} calls)" if _num(base) else "")
    return ""


def section_mitigations(runs: list[Run]) -> Section | None:
    """One line per model or mitigation (the runs' labels as given), one column per headline number the
    benchmarks declare (``Benchmark.report_headlines``), and the cost; None with fewer than two lines."""
    from ..registry import BENCHMARKS

    systems: dict[str, list[Run]] = {}
    for r in runs:
        systems.setdefault(str(r.extra.get("system", r.label)), []).append(r)
    if len(systems) < 2:
        return None
    cols = []
    for bench in dict.fromkeys(r.benchmark for r in runs):
        try:
            cls = BENCHMARKS.get(_bench_name(bench))
        except Exception:
            continue
        cols += [(bench, h) for h in getattr(cls, "report_headlines", ())]
    cells: dict[str, list[str]] = {}
    for name, rs in systems.items():
        line = []
        for bench, h in cols:
            row = next((row for r in rs if r.benchmark == bench for row in _rows(r) if _match(row, h.where)), None)
            # measured but without a value (s_AMB when no answer names a person) is not "not measured"
            line.append("—" if row is None else fmt_ci(row.get("value"), row.get("ci_low"), row.get("ci_high"))
                        if _num(row.get("value")) else "undefined")
        cells[name] = line
    keep = [k for k in range(len(cols)) if any(line[k] != "—" for line in cells.values())]
    if not keep:
        return None
    # a line without any headline number (e.g. a self-distillation's summary, or its held-out disambiguated
    # runs) says nothing here; its own section holds its figures
    cells = {name: line for name, line in cells.items() if any(line[k] != "—" for k in keep)}
    systems = {name: rs for name, rs in systems.items() if name in cells}
    if len(systems) < 2:
        return None
    body = [[name] + [cells[name][k] for k in keep] + [next((c for c in map(_cost, rs) if c), "none")]
            for name, rs in systems.items()]
    s = Section("mitigations", "Mitigations side by side",
                "Each line is a model or a mitigation of it (an inference-time method, a model intervention or a "
                "trained model); each column a headline number of one benchmark, value [95% CI]. Cost: training "
                "steps and seconds for a trained model, extra forward passes per scored or generated token for an "
                "intervention (and its one-time estimation).")
    s.tables.append(Table("Mitigations side by side", ["model / mitigation"] + [cols[k][1].label for k in keep] + ["cost"],
                          body, numeric=[False] + [True] * len(keep) + [False]))
    s.definitions.update({cols[k][1].label: cols[k][1].note for k in keep if cols[k][1].note})
    if any("undefined" in line for line in body):
        s.definitions["undefined"] = "the run measured this but it has no value (e.g. a bias score when no answer names a person)"
    return s


def _direction(d: dict) -> str:
    """lower / higher when the paired difference's 95% CI excludes 0, else no clear change."""
    lo, hi = d.get("ci_low"), d.get("ci_high")
    if _num(lo) and _num(hi):
        return "lower" if hi < 0 else "higher" if lo > 0 else "no clear change"
    v = d.get("value")
    return ("lower" if v < 0 else "higher" if v > 0 else "no change") + " (no CI)" if _num(v) else "—"


def section_references(runs: list[Run], references: Sequence[dict[str, Any]]) -> Section | None:
    """Each published number beside this report's: for every method the reference reports, the published
    value and its direction from the published baseline, this run's value [CI] and its paired difference's
    direction, and whether the two directions agree."""
    refs = [r for r in references or [] if isinstance(r, dict)]
    if not refs:
        return None
    body, notes = [], []
    for ref in refs:
        values = ref.get("values") or {}
        base_pub = values.get("baseline")
        stat = str(ref.get("statistic", "")) + (f" ({ref['condition']})" if ref.get("condition") else "")
        comps = [r for r in runs if r.comparison and _bench_name(r.benchmark) == ref.get("benchmark", r.benchmark)]
        for method, pub in values.items():
            if method == "baseline":
                continue
            pub_dir = ("lower" if pub < base_pub else "higher" if pub > base_pub else "no change") \
                if _num(pub) and _num(base_pub) else "—"
            hits = [r for r in comps if _method_of(r.config) == method]
            if not hits:
                body.append([str(ref.get("source", "")), stat, method, fmt(base_pub), fmt(pub), pub_dir, "not run", "", "", ""])
                continue
            for r in hits:
                rows = [x for x in (r.comparison or {}).get("rows") or [] if isinstance(x, dict)
                        and x.get("metric") == ref.get("statistic")
                        and (ref.get("condition") is None or x.get("condition") == ref.get("condition"))]
                by = {x.get("run"): x for x in rows}
                if "difference" not in by:
                    continue
                here = _direction(by["difference"])
                agree = ("yes" if here == pub_dir else "no, opposite" if {here, pub_dir} == {"lower", "higher"}
                         else "not shown here" if here == "no clear change" else "—")
                b, m, d = by.get("baseline", {}), by.get("method", {}), by["difference"]
                body.append([str(ref.get("source", "")), stat, r.label, fmt(base_pub), fmt(pub), pub_dir,
                             f"{fmt_ci(b.get('value'), b.get('ci_low'), b.get('ci_high'))} → "
                             f"{fmt_ci(m.get('value'), m.get('ci_low'), m.get('ci_high'))}",
                             f"{fmt_ci(d.get('value'), d.get('ci_low'), d.get('ci_high'))}, p = {fmt(d.get('p_value'))}",
                             here, agree])
        if ref.get("note"):
            notes.append(f"{ref.get('source', '')}: {ref['note']}")
    if not body:
        return None
    s = Section("references", "Beside published results",
                "The published numbers this study sets itself beside (from the study file's report.references), "
                "and this model's paired result on the same statistic: does the method move it the same way here? "
                "'not shown here' = the difference's 95% CI includes 0.")
    s.tables.append(Table("Published direction and this model's", [
        "source", "statistic", "method run", "published baseline", "published method", "published direction",
        "here: baseline → method [95% CI]", "here: difference [95% CI]", "here: direction", "agrees?"], body,
        numeric=[False, False, False, True, True, False, False, False, False, False]))
    s.notes += notes
    return s


def _final_answer_kept(rec: dict) -> bool | None:
    """For a multi-turn method that records its first answer: did the final answer keep its letter?"""
    first = ((rec.get("method_extra") or {}).get("first_answer"))
    if first is None:
        return None
    from ..benchmarks.bbq_scoring import parse_letter

    a, b = parse_letter(str(first)), parse_letter(str(rec.get("final_text", "")))
    return None if a is None or b is None else a == b


def section_transcripts(runs: list[Run], per_run: int = 2) -> Section | None:
    """What each method run actually said: the first items' transcripts (as run, not selected), and
    for methods that ask twice, how often the second answer kept the first one's letter, so an
    instruction the model ignores shows in its own words rather than being tuned away."""
    s = Section("transcripts", "Transcripts",
                f"The first {per_run} items of each method run, in run order (not selected), rotation 0 where options "
                "were rotated. For methods that ask twice (reprompting), 'kept' counts answers whose letter did not "
                "change after the debiasing instruction.")
    kept_rows = []
    for r in runs:
        if not r.comparison or not _method_of(r.config):
            continue
        path = r.path / "results.jsonl"
        if not path.exists():
            continue
        shown, kept, asked = 0, 0, 0
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                for rot in (rec.get("rotations") or [rec]):
                    k = _final_answer_kept(rot)
                    if k is not None:
                        asked += 1
                        kept += k
                first = (rec.get("rotations") or [rec])[0]
                turns = [t for t in first.get("transcript") or [] if isinstance(t, dict)]
                if shown < per_run and turns:
                    s.transcripts.append((f"{r.label}, item {rec.get('id')} (answer parsed: "
                                          f"{first.get('letter') or first.get('status')})",
                                          [{"role": str(t.get("role")), "content": str(t.get("content"))} for t in turns]))
                    shown += 1
        if asked:
            kept_rows.append({"method run": r.label, "answers asked twice": asked, "kept the first letter": kept,
                              "share kept": kept / asked})
    if kept_rows:
        s.tables.append(table_from_dicts("Did the model change its answer when asked to?", kept_rows))
    return s if s.transcripts or s.tables else None


def section_languages(runs: list[Run]) -> Section | None:
    """BBQ and its translations side by side (plain runs, one model): per BBQ category the benchmarks
    share, accuracy and bias score per condition, value [95% CI] per run. None unless two benchmarks
    of the family are present."""
    from ..registry import BENCHMARKS

    family = []
    for r in runs:
        if _method_of(r.config) or _intervention_of(r.config):
            continue
        try:
            cls = BENCHMARKS.get(_bench_name(r.benchmark))
        except Exception:
            continue
        if hasattr(cls, "bbq_categories") and hasattr(cls, "lang_code"):
            family.append((r, cls))
    if len({cls for _, cls in family}) < 2:
        return None
    index: dict[tuple, dict[int, dict]] = {}
    for i, (r, cls) in enumerate(family):
        mapping = cls.bbq_categories
        for row in _rows(r):
            if row.get("metric") not in ("accuracy", "bias_score"):
                continue
            cat = row.get("category")
            bbq_cat = cat if mapping is None or cat == "overall" else mapping.get(cat)
            if bbq_cat is None:
                continue
            index.setdefault((bbq_cat, row.get("condition"), row.get("metric")), {})[i] = row
    shared = {k: v for k, v in index.items() if len({family[i][1] for i in v}) >= 2 or k[0] == "overall"}
    if not shared:
        return None
    cols = ["BBQ category", "condition", "metric"] + [f"{r.label} ({cls.lang_code}): value [95% CI]"
                                                      for r, cls in family]
    order = sorted(shared, key=lambda k: (k[0] == "overall", k[0], str(k[1]), k[2]))
    body = [[k[0], str(k[1]), k[2]] + [fmt_ci(shared[k][i].get("value"), shared[k][i].get("ci_low"),
                                                shared[k][i].get("ci_high")) + f" (n={fmt(shared[k][i].get('n'))})"
                                         if i in shared[k] else "—" for i in range(len(family))] for k in order]
    s = Section("languages", "Across languages",
                "BBQ and its Chinese (CBBQ) and Korean (KoBBQ) counterparts on the categories they share, BBQ's "
                "accuracy and bias score (−1..1, 0 = no bias) with bootstrap 95% CIs. The datasets were written "
                "separately for each culture, so a difference mixes the language with the items; the per-category "
                "rows compare like with like as far as the categories allow. 'overall' covers each run's own "
                "categories.")
    s.tables.append(Table("Bias and accuracy per shared category, by language", cols, body,
                          numeric=[False] * 3 + [True] * len(family)))
    return s


def _bench_name(bench: str) -> str:
    return bench.replace("holistic_bias", "holistic-bias").replace("bscore", "b-score")


def build_sections(runs: list[Run], references: Sequence[dict[str, Any]] | None = None,
                   transcripts: bool = True) -> list[Section]:
    by_bench: dict[str, list[Run]] = {}
    for r in runs:
        by_bench.setdefault(r.benchmark, []).append(r)
    sections = []
    mit = section_mitigations(runs)
    if mit:
        sections.append(mit)
    for bench, rs in by_bench.items():
        sections.append(section_for(_bench_name(bench), rs))
    comp = section_comparisons(runs)
    if comp:
        sections.append(comp)
    lang = section_languages(runs)
    if lang:
        sections.insert(1 if mit else 0, lang)
    ref = section_references(runs, references or [])
    if ref:
        sections.insert(1 if mit else 0, ref)
    tr = section_transcripts(runs) if transcripts else None
    if tr:
        sections.append(tr)
    return sections


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def _env():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("fairdistill.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "jinja"]),
        trim_blocks=True, lstrip_blocks=True,
    )


def render_html(runs: list[Run], title: str = "fairdistill report",
                references: Sequence[dict[str, Any]] | None = None) -> str:
    from .._version import __version__

    sections = build_sections(runs, references)
    tpl = _env().get_template("report.html.jinja")
    return tpl.render(title=title, sections=sections, runs=runs, configs=run_config_rows(runs),
                      version=__version__, headline=headline_rows(runs), fmt=fmt, fmt_ci=fmt_ci)


def _overall_row(run: Run, metric: str) -> dict[str, Any]:
    """The one tidy row of ``metric`` at the overall level (level/category "overall"), else {}.

    A summary key may name a metric and a condition (BBQ's ``accuracy_ambig``: metric ``accuracy``,
    condition ``ambig``), so those rows match too."""
    overall = [row for row in _rows(run)
               if row.get("level", "overall") == "overall" and row.get("category", "overall") == "overall"]
    hits = [row for row in overall if row.get("metric") == metric and "condition" not in row]
    if not hits:
        hits = [row for row in overall if row.get("condition")
                and f"{row.get('metric')}_{row['condition']}" == metric]
    if not hits:
        hits = [row for row in overall if row.get("metric") == metric]
    return hits[0] if len(hits) == 1 else {}


def headline_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """A few numbers per run: the benchmark's scalar summary values, with the overall row's CI."""
    out = []
    for r in runs:
        summ = r.metrics.get("summary") or {}
        for k, v in summ.items():
            if _num(v):
                row = _overall_row(r, k)
                row = row if row.get("value") == v else {}  # a CI only for the very same number
                out.append({"run": r.label, "benchmark": r.benchmark, "quantity": k, "value": v,
                            "ci_low": row.get("ci_low"), "ci_high": row.get("ci_high")})
    return out


def build_report(run_dirs: Sequence[str | Path], out: str | Path, *, labels: Sequence[str] | None = None,
                 title: str = "fairdistill report", markdown: bool = True,
                 references: Sequence[dict[str, Any]] | None = None) -> Path:
    """Write a self-contained HTML report of ``run_dirs`` to ``out`` (and ``report.md`` beside it).

    The file has no external references: styles are inline and charts are inline SVG, so it opens
    offline and can be attached or published as is. ``references``: published numbers to set beside
    the paired comparisons (a study's ``report.references``; a study folder's own are read from its
    study.json). Returns the HTML path.
    """
    runs = load_runs(run_dirs, labels)
    if references is None:
        references = [ref for d in run_dirs if (Path(d) / "study.json").exists()
                      for ref in _read_json(Path(d) / "study.json").get("references") or []]
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out / "report.html" if (out.is_dir() or not out.suffix) else out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(runs, title=title, references=references), encoding="utf-8")
    if markdown:
        out.with_suffix(".md").write_text(_markdown(runs, title=title, references=references), encoding="utf-8")
    return out


def build_markdown_summary(run_dirs: Sequence[str | Path], out: str | Path | None = None, *,
                           labels: Sequence[str] | None = None, title: str = "Bias and capability evaluation") -> str:
    """A Markdown summary for a model card: headline numbers per benchmark and run, with meanings."""
    runs = load_runs(run_dirs, labels)
    text = _markdown(runs, title=title)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text, encoding="utf-8")
    return text


def _md_table(t: Table, max_rows: int = 40) -> str:
    def esc(x: str) -> str:
        return x.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in t.columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in t.numeric) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in t.rows[:max_rows]]
    more = len(t.rows) - max_rows + t.truncated
    if more > 0:
        lines.append(f"\n… {more} more rows in the HTML report / metrics.json")
    return "\n".join(lines)


def _markdown(runs: list[Run], title: str, references: Sequence[dict[str, Any]] | None = None) -> str:
    from .._version import __version__

    parts = [f"## {title}", "",
             f"Measured with fairdistill {__version__}. Runs: " + "; ".join(f"**{r.label}** ({r.benchmark})" for r in runs) + ".",
             ""]
    for s in build_sections(runs, references, transcripts=False):  # transcripts quote items: HTML only
        parts += [f"### {s.title}", "", s.intro, ""]
        if s.tables:
            parts += [f"**{s.tables[0].title}**", "", _md_table(s.tables[0]), ""]
        if s.notes:
            parts += [f"- {n}" for n in s.notes] + [""]
        if s.definitions:
            parts += ["<details><summary>What the numbers mean</summary>", ""]
            parts += [f"- **{k}**: {v}" for k, v in s.definitions.items()]
            parts += ["", "</details>", ""]
    parts += ["### Reproducibility", ""]
    for c in run_config_rows(runs):
        parts.append(f"- **{c['run']}** ({c['benchmark']}): model `{c['model']}`, method `{c['method']}`, seed "
                     f"{c['seed']}, options `{c['options']}`; {c['versions']}; "
                     f"{len(c['data_sha256'])} data file(s) hashed in config.json")
    return "\n".join(parts) + "\n"

