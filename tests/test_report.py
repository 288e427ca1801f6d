"""The HTML report: built from real tiny-model runs, self-contained, rendered by headless Chromium.

Chromium is not installed by the test: CI installs Debian's package (``apt-get install -y
chromium``). Without it the rendering test is skipped locally and fails under CI=true.
"""
import json
import os
import re
import shutil
import subprocess

import pytest

from fairdistill.benchmarks.base import EvalContext
from fairdistill.benchmarks.bbq import BBQ
from fairdistill.errors import UserError
from fairdistill.report import build_markdown_summary, build_report, redact
from fairdistill.runner import run_benchmark
from fairdistill.store import RunStore


@pytest.fixture(scope="module")
def run_dirs(tiny_gpt2, tiny_llama_chat, tmp_path_factory):
    root = tmp_path_factory.mktemp("report_runs")
    dirs = []
    # BBQ log-likelihood on two tiny models: the "before/after" pair shown side by side
    for name, backend in (("gpt2", tiny_gpt2), ("llama", tiny_llama_chat)):
        d = root / f"bbq-{name}"
        run_benchmark(BBQ(categories=["Age", "Religion"], limit=6, mode="loglik"), EvalContext(backend=backend),
                      RunStore(d), show_progress=False, extra_config={"api_key": "sk-SECRET-DO-NOT-SHOW"})
        dirs.append(d)
    # capability (lm-eval) on a few MMLU items
    pytest.importorskip("lm_eval")
    from fairdistill.benchmarks.capability import Capability

    for name, backend in (("gpt2", tiny_gpt2), ("llama", tiny_llama_chat)):
        d = root / f"cap-{name}"
        run_benchmark(Capability(tasks=["mmlu"], subjects=["anatomy", "virology"], limit=4), EvalContext(backend=backend),
                      RunStore(d), show_progress=False)
        dirs.append(d)
    # a paired comparison as written by `fairdistill eval --compare` (transition table)
    try:
        from fairdistill.compare import compare_run_dirs
    except ImportError:
        compare_run_dirs = None
    if compare_run_dirs is not None:
        comp = compare_run_dirs(dirs[0], dirs[1], seed=0)
        (dirs[1] / "comparison.json").write_text(json.dumps(comp, default=str))
        return dirs
    (dirs[1] / "comparison.json").write_text(json.dumps({
        "rows": [{"category": "overall", "metric": "accuracy", "delta": 0.05, "ci_low": -0.1, "ci_high": 0.2, "p_value": 0.6}],
        "transitions": {"ambig": {"counts": {"correct->correct": 3, "correct->incorrect": 1, "incorrect->correct": 2,
                                             "incorrect->incorrect": 6}, "n": 12}},
        "definitions": {"delta": "method minus baseline; see the metric's own range"},
    }))
    return dirs


@pytest.fixture(scope="module")
def report(run_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    path = build_report([str(d) for d in run_dirs], str(out))
    return path, path.read_text(encoding="utf-8")


def test_report_is_self_contained(report):
    path, html = report
    assert path.exists() and path.with_suffix(".md").exists()
    # nothing is fetched: no scripts, no stylesheets or images by URL, no CSS url()/@import of a URL
    assert "<script" not in html.lower() and "<link" not in html.lower() and "<img" not in html.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//|@import""", html, re.I)
    # the only URLs are XML namespace declarations of the inline SVGs
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls
    assert "sk-SECRET-DO-NOT-SHOW" not in html and "sk-SECRET-DO-NOT-SHOW" not in path.with_suffix(".md").read_text()


def test_report_content(report):
    _, html = report
    svgs = re.findall(r"<svg\b.*?</svg>", html, re.S)
    assert len(svgs) >= 5  # BBQ bias x2, accuracy x2, capability, capability delta
    for s in svgs:
        assert len(re.findall(r"<path\b", s)) >= 5  # bars / axes actually drawn
    # every chart's ids are unique across the page (no clip-path clashes)
    ids = re.findall(r'\bid="([^"]+)"', "".join(svgs))
    assert len(ids) == len(set(ids))
    for text in ("BBQ: bias in question answering", "Capability retention", "Paired comparisons",
                 "transitions", "Run configuration", "sha256", "What the numbers mean", "95% CI",
                 "Δ llama-chat − gpt2", "higher is better", "0 = no bias"):
        assert text in html, text


def test_markdown_summary(run_dirs, tmp_path):
    md = build_markdown_summary([str(d) for d in run_dirs], tmp_path / "card.md")
    assert (tmp_path / "card.md").read_text() == md
    assert "| category | condition | metric |" in md and "Reproducibility" in md and "bias_score" in md


def test_redact_and_errors(tmp_path):
    cfg = {"api_key": "x", "hf_token": "y", "tokenizer": "z", "nested": {"client_secret": "s", "max_new_tokens": 3}}
    assert redact(cfg) == {"api_key": "[redacted]", "hf_token": "[redacted]", "tokenizer": "z",
                           "nested": {"client_secret": "[redacted]", "max_new_tokens": 3}}
    with pytest.raises(UserError, match="not found"):
        build_report([str(tmp_path / "nope")], str(tmp_path / "r.html"))
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(UserError, match="has not finished"):
        build_report([str(tmp_path / "unfinished")], str(tmp_path / "r.html"))


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def test_report_renders_in_headless_chromium(report, tmp_path):
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI installs it: apt-get install -y chromium)")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    path, _ = report
    shot = tmp_path / "shot.png"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,4000",
           path.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    import numpy as np
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 4000)
    px = np.asarray(img, dtype=np.int16)
    # not blank: real variation in the pixels
    assert px.std() > 20, px.std()

    def count(rgb, tol=30):
        return int((np.abs(px - np.array(rgb, dtype=np.int16)) <= tol).all(axis=-1).sum())

    # the charts were drawn: bars in the first two palette colours (blue #0072B2, orange #E69F00)
    assert count((0x00, 0x72, 0xB2)) > 2000
    assert count((0xE6, 0x9F, 0x00)) > 2000


def test_generic_benchmark_and_holistic_sections(tmp_path):
    """Benchmarks without a dedicated layout get their tidy rows as a table and a bar chart; the
    HolisticBias section draws the axis x template heat map and the descriptor-gap table."""
    gen = tmp_path / "gen"
    store = RunStore(gen)
    store.write_config({"identity": {"benchmark": "crows-pairs", "model": {"model": "m"}, "seed": 0},
                        "data_sha256": {"/data/x.csv": "0" * 64}})
    store.write_metrics({"rows": [{"bias_type": t, "metric": "stereotype_score", "value": v, "ci_low": v - .1,
                                   "ci_high": v + .1, "n": 20} for t, v in (("gender", .6), ("race", .55))],
                         "summary": {"stereotype_score": .58},
                         "definitions": {"stereotype_score": "share preferring the stereotype; 0..1, 0.5 is unbiased"},
                         "meta": {"benchmark": "crows-pairs"}})
    hb = tmp_path / "hb"
    store = RunStore(hb)
    store.write_config({"identity": {"benchmark": "holistic-bias", "model": {"model": "m"}, "seed": 0}})
    store.write_metrics({
        "rows": [{"level": "overall", "axis": None, "template": None, "value": .3, "n_pairs": 12, "n_significant": 4},
                 {"level": "axis", "axis": "age", "template": None, "value": .5, "n_pairs": 6, "n_significant": 3},
                 {"level": "axis", "axis": "ability", "template": None, "value": .1, "n_pairs": 6, "n_significant": 1},
                 {"level": "axis_template", "axis": "age", "template": "I am {np}.", "value": .5, "n_pairs": 3},
                 {"level": "axis_template", "axis": "ability", "template": "I love {np}.", "value": .1, "n_pairs": 3}],
        "summary": {"likelihood_bias": .3},
        "definitions": {"likelihood_bias": "share of significant pairs; 0..1, lower is better"},
        "descriptors": {"gaps": [{"axis": "age", "lowest": "young", "lowest_median": 20.0, "highest": "old",
                                  "highest_median": 35.0, "gap": 15.0, "ratio": 1.75}], "extremes": []},
        "meta": {"benchmark": "holistic-bias"}})
    path = build_report([str(gen), str(hb)], str(tmp_path / "r.html"))
    html = path.read_text()
    assert "crows-pairs metrics" in html and "0.5 is unbiased" in html and "0.600 [0.500, 0.700]" in html
    assert "axis × template" in html and "largest perplexity gaps" in html and "young" in html
    assert len(re.findall(r"<svg\b", html)) >= 3


def test_position_bias_section_and_warning(tmp_path):
    """A generation-mode run whose answers pile on one letter: letter table and the warning line in the report."""
    from test_position import OptionPicker

    bench = BBQ(categories=["Age"], limit=12, mode="generate")
    labels = [r["label"] for r in bench.load_items()]
    letter = "ABC"[min(range(3), key=labels.count)]  # the letter least often right: always answering it is skewed
    assert labels.count("ABC".index(letter)) / len(labels) < 0.5
    d = tmp_path / "bbq-one-letter"
    run_benchmark(bench, EvalContext(backend=OptionPicker(letter_prior=letter)), RunStore(d), show_progress=False)
    html = build_report([str(d)], str(tmp_path / "r.html")).read_text(encoding="utf-8")
    assert "Answer letters and position bias" in html and "letter_share" in html
    assert f"position bias: letter {letter} takes 100% of answers" in html and "permute=cyclic" in html


def test_holistic_bscore_occupation_sections_show_cis(tmp_path):
    """Metrics as the three benchmarks write them: every section and the headline table show the
    headline values with their bootstrap CIs (hand-checked values from the benchmarks' own tests)."""
    from test_bscore import _rec
    from test_holistic_bias import HAND_TABLE
    from test_occupation import _occ_records

    from fairdistill.benchmarks.bscore import bscore_metrics
    from fairdistill.benchmarks.holistic_bias import score_file
    from fairdistill.benchmarks.occupation import occupation_metrics

    table = tmp_path / "ppl.jsonl"
    table.write_text("\n".join(json.dumps({"text": "x", **r}) for r in HAND_TABLE) + "\n")
    bscore_recs = [_rec("s1", "subjective", 0, {"a": 5}, {"a": 4, "b": 1}),
                   _rec("s2", "subjective", 0, {"a": 5}, {"a": 4, "b": 1}),
                   _rec("r1", "random", 0, {"a": 5}, {"a": 3, "b": 2}),
                   _rec("r2", "random", 0, {"b": 5}, {"a": 2, "b": 3})]
    occ = _occ_records([("nurse", "female-dominated", 50, 0.5), ("maid", "female-dominated", 70, 0.7),
                        ("pilot", "male-dominated", 10, 0.1), ("welder", "male-dominated", 10, 0.1)])
    dirs = []
    for bench, metrics in (("holistic-bias", score_file(table)), ("b-score", bscore_metrics(bscore_recs)),
                           ("occupation-gender", occupation_metrics(occ))):
        store = RunStore(tmp_path / bench)
        store.write_config({"identity": {"benchmark": bench, "model": {"model": "m"}, "seed": 0}})
        store.write_metrics({**metrics, "meta": {"benchmark": bench}})
        dirs.append(str(tmp_path / bench))
    html = build_report(dirs, str(tmp_path / "r.html")).read_text()
    sections = {m.group(1): m.group(2) for m in re.finditer(r'<section id="([^"]+)">(.*?)</section>', html, re.S)}
    hb, bs, oc = sections["sec-holistic-bias"], sections["sec-b-score"], sections["sec-occupation-gender"]
    assert "Likelihood Bias [95% CI]" in hb and "0.600 [0.000, 1.000]" in hb  # overall: 3 of 5 pairs
    assert "0.500 [0.500, 0.500]" in hb  # axis B: one draw per axis shared by its templates
    assert "mean |B(top)| [95% CI]" in bs and "0.300 [0.300, 0.300]" in bs and "0.300 [0.200, 0.400]" in bs
    assert "0.600 [0.500, 0.700]" in oc and "0.500 [0.400, 0.600]" in oc  # female share, female_gap
    assert "whiskers = 95% CI" in hb and "whiskers = 95% CI" in bs
    head = sections["headline"]
    assert "value [95% CI]" in head and "0.600 [0.000, 1.000]" in head and "0.300 [0.300, 0.300]" in head


def test_published_references_set_beside_paired_results(tmp_path):
    """A published drop (0.136 -> 0.023) against a paired difference whose CI is below 0 agrees; one
    whose CI straddles 0 is 'not shown here'; one above 0 is the opposite direction."""
    from fairdistill.report.build import Run, section_references

    def run(method, lo, hi):
        rows = [{"condition": "ambig", "metric": "s_AMB", "run": "baseline", "value": 0.10, "ci_low": 0.05, "ci_high": 0.15},
                {"condition": "ambig", "metric": "s_AMB", "run": "method", "value": 0.10 + (lo + hi) / 2},
                {"condition": "ambig", "metric": "s_AMB", "run": "difference", "value": (lo + hi) / 2,
                 "ci_low": lo, "ci_high": hi, "p_value": 0.01}]
        return Run(path=tmp_path, label=f"m + {method}", benchmark="bbq", config={"identity": {"method": method}},
                   metrics={}, comparison={"rows": rows})

    ref = {"source": "Gallegos", "benchmark": "bbq", "condition": "ambig", "statistic": "s_AMB",
           "values": {"baseline": 0.136, "explanation": 0.045, "reprompting": 0.023, "intent-aware": 0.2}}
    s = section_references([run("reprompting", -0.08, -0.02), run("explanation", -0.05, 0.03),
                            run("intent-aware", -0.04, -0.01)], [ref])
    rows = {r[2]: r for r in s.tables[0].rows}
    assert rows["m + reprompting"][-2:] == ["lower", "yes"]
    assert rows["m + explanation"][-2:] == ["no clear change", "not shown here"]
    assert rows["m + intent-aware"][5] == "higher" and rows["m + intent-aware"][-2:] == ["lower", "no, opposite"]
    assert section_references([run("reprompting", -0.08, -0.02)], []) is None


def test_across_languages_pairs_categories_through_their_bbq_counterparts(tmp_path):
    from fairdistill.report.build import Run, build_sections, section_languages

    def run(bench, cats, label):
        rows = [{"category": c, "condition": "ambig", "metric": m, "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1, "n": 30}
                for c, v in cats for m in ("accuracy", "bias_score")]
        return Run(path=tmp_path, label=label, benchmark=bench, config={"identity": {}}, metrics={"rows": rows})

    runs = [run("bbq", [("Age", 0.3), ("Nationality", 0.1), ("overall", 0.2)], "q"),
            run("cbbq", [("age", 0.5), ("disease", 0.4), ("overall", 0.45)], "q"),
            run("kobbq", [("age", 0.6), ("race_ethnicity_nationality", 0.2), ("overall", 0.5)], "q")]
    s = section_languages(runs)
    rows = {tuple(r[:3]): r[3:] for r in s.tables[0].rows}
    assert rows[("Age", "ambig", "bias_score")] == ["0.300 [0.200, 0.400] (n=30)", "0.500 [0.400, 0.600] (n=30)",
                                                     "0.600 [0.500, 0.700] (n=30)"]
    assert ("overall", "ambig", "accuracy") in rows
    # no counterpart (disease), merged categories (KoBBQ race_ethnicity_nationality), BBQ-only rows: left out
    assert {k[0] for k in rows} == {"Age", "overall"}
    assert "(zh)" in s.tables[0].columns[4] and "(ko)" in s.tables[0].columns[5]
    assert section_languages(runs[:1]) is None  # one language: nothing to set side by side
    assert [x.id for x in build_sections(runs)][0] == "languages"


def test_mitigations_table_leaves_out_lines_without_a_headline_number(tmp_path):
    """A run that carries none of the table's headline numbers (a self-distillation's summary line, its
    held-out disambiguated runs) gets no empty line; lines with a number keep their place and cost."""
    from fairdistill.report.build import Run, section_mitigations

    def run(system, condition, value):
        rows = [{"category": "overall", "condition": condition, "metric": "bias_score", "value": value,
                 "ci_low": value - 0.1, "ci_high": value + 0.1}]
        return Run(tmp_path, system, "bbq", {}, {"rows": rows}, extra={"system": system})

    undefined = Run(tmp_path, "method", "bbq", {}, {"rows": [{"category": "overall", "condition": "ambig",
                    "metric": "bias_score", "value": None, "ci_low": None, "ci_high": None}]}, extra={"system": "method"})
    runs = [run("base", "ambig", 0.03), run("student", "ambig", 0.14), run("held-out disambig", "disambig", 0.02),
            undefined]
    section = section_mitigations(runs)
    table = section.tables[0]
    # measured without a value (every answer "unknown") is kept and said, not dropped as "not measured"
    assert [line[0] for line in table.rows] == ["base", "student", "method"]
    assert table.rows[1][1] == "0.140 [0.040, 0.240]" and table.rows[2][1] == "undefined"
    assert "undefined" in section.definitions
    # with a single line left there is nothing to set side by side
    assert section_mitigations(runs[:1] + runs[2:3]) is None


def test_a_study_report_opens_with_the_mitigations_and_folds_the_long_run_table(tmp_path):
    """Many runs with a side-by-side table: the per-run headline table is folded (one click away), the
    side-by-side table is the first section; a short report keeps the headline table open."""
    from fairdistill.report.build import Run, render_html

    def run(i):
        rows = [{"category": "overall", "condition": "ambig", "metric": "bias_score", "value": 0.01 * i,
                 "ci_low": 0.0, "ci_high": 0.5}]
        return Run(tmp_path, f"system-{i}", "bbq", {}, {"rows": rows, "summary": {"a": 0.1, "b": 0.2}},
                   extra={"system": f"system-{i}"})

    def headline(html):
        return re.search(r'<section id="headline">(.*?)</section>', html, re.S).group(1)

    html = render_html([run(i) for i in range(16)])
    assert "<details><summary>every run's summary values (32 rows" in headline(html)
    assert html.index('<section id="headline">') < html.index('<section id="sec-mitigations">')
    assert re.findall(r'<section id="sec-([^"]+)">', html)[0] == "mitigations"
    assert "<details>" not in headline(render_html([run(i) for i in range(3)]))


def test_a_benchmark_chart_of_many_runs_is_a_heat_map_with_every_run_and_category(tmp_path):
    """Past MAX_BAR_SERIES runs the per-category bars would be unreadable: the chart becomes one row per
    run and one column per category (diverging colours around 0 for a bias score); few runs keep bars."""
    from fairdistill.report.build import MAX_BAR_SERIES, Run, section_for

    def run(i):
        rows = [{"category": c, "condition": "ambig", "metric": "bias_score", "value": 0.05 * i - 0.3 + 0.1 * k,
                 "ci_low": -0.5, "ci_high": 0.5, "n": 10} for k, c in enumerate(["Age", "Religion", "SES"])]
        rows.append({"category": "overall", "condition": "ambig", "metric": "accuracy", "value": 0.5,
                     "ci_low": 0.4, "ci_high": 0.6, "n": 30})
        return Run(tmp_path, f"system-{i}", "bbq", {}, {"rows": rows}, extra={"system": f"system-{i}"})

    many = section_for("bbq", [run(i) for i in range(MAX_BAR_SERIES + 3)])
    captions = [c for c, _ in many.charts]
    grids = [(c, svg) for c, svg in many.charts if "one row per run" in c]
    assert grids and not any("one bar per run" in c for c in captions if "bias" in c.lower())
    caption, svg = grids[0]
    assert f"({MAX_BAR_SERIES + 3} runs" in caption
    assert all(f"system-{i}" in svg for i in range(MAX_BAR_SERIES + 3)) and "Religion" in svg
    # a run with no value under a facet (another condition) gets no empty row there
    other = Run(tmp_path, "disambig-only", "bbq", {}, {"rows": [{**row, "condition": "disambig"} for row in
                                                                run(0).metrics["rows"]]}, extra={"system": "d"})
    mixed = section_for("bbq", [run(i) for i in range(MAX_BAR_SERIES + 3)] + [other])
    ambig = next(svg for c, svg in mixed.charts if "one row per run" in c and "ambig" in c and "disambig" not in c)
    assert "disambig-only" not in ambig and "system-3" in ambig
    few = section_for("bbq", [run(i) for i in range(3)])
    assert any("one bar per run" in c for c, _ in few.charts)
    assert not any("one row per run" in c for c, _ in few.charts)


def test_headline_numbers_carry_the_ci_of_a_metric_condition_row(tmp_path):
    # BBQ-family summaries name metric and condition in one key (accuracy_ambig); the headline table
    # must find that row's CI rather than print the bare number
    from pathlib import Path

    from fairdistill.report.build import Run, headline_rows

    rows = [{"category": "overall", "condition": c, "metric": "accuracy", "value": v, "ci_low": v - 0.1,
             "ci_high": v + 0.1, "n": 50} for c, v in (("ambig", 0.2), ("disambig", 0.7))]
    rows.append({"category": "overall", "metric": "ss", "value": 0.6, "ci_low": 0.55, "ci_high": 0.65})
    run = Run(path=Path(tmp_path), label="m", benchmark="bbq", config={},
              metrics={"rows": rows, "summary": {"accuracy_ambig": 0.2, "accuracy_disambig": 0.7, "ss": 0.6,
                                                 "accuracy_other": 0.5, "scale": "fraction"}})
    got = {h["quantity"]: (h["ci_low"], h["ci_high"]) for h in headline_rows([run])}
    assert got["accuracy_ambig"] == pytest.approx((0.1, 0.3))
    assert got["accuracy_disambig"] == pytest.approx((0.6, 0.8))
    assert got["ss"] == pytest.approx((0.55, 0.65))
    assert got["accuracy_other"] == (None, None)  # no such row: no CI invented
    assert "scale" not in got


def test_percentages_print_one_decimal_with_their_interval_and_fractions_three():
    from fairdistill.report.build import fmt, fmt_ci

    assert fmt_ci(55.344, 9.87, 61.45) == "55.3 [9.9, 61.5]"  # one precision within a cell
    assert fmt_ci(0.0712, -0.031, 0.169) == "0.071 [-0.031, 0.169]"
    assert fmt(925.787) == "925.8" and fmt(12345.6) == "12,345.6" and fmt(0.5) == "0.500"
