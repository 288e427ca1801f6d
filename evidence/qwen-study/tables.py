"""Print the README's Qwen-study tables (markdown) from this folder's metrics and comparisons.

    python evidence/qwen-study/tables.py methods    # inference-time methods against the plain model
    python evidence/qwen-study/tables.py students   # FairDistillation students against the base model
    python evidence/qwen-study/tables.py self       # self-distillation: teacher, untrained, student

Reads only committed files (metrics.json, comparison.json, fairdistill.json), so the tables can be
made again on a fresh clone without the caches.
"""
import json
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
METHODS = ["reprompting", "prefix-1", "prefix-2", "prefix-3", "prefix-4", "prefix-5", "prefix-6",
           "explanation", "intent-aware", "adjudication"]
STUDENTS = ["qwen15-fd-he-she", "qwen15-fd-gender", "qwen15-fd-published-objective", "qwen15-fd-no-rule",
            "qwen15-fd-he-she-lr3e-4", "qwen15-fairdistill-he-she"]


def load(path):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def ci(v, lo, hi, fmt="{:+.3f}"):
    return f"{fmt.format(v)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def p(x):
    if x is None:
        return "p —"
    return "p < 0.001" if x == 0 else f"p = {x:.2g}"


def row(c, condition, metric, run):
    for r in c["rows"]:
        if r["condition"] == condition and r["metric"] == metric and r["run"] == run:
            return r
    return None


def methods_table():
    print("| method | condition | items | bias score | paired difference | accuracy: paired difference "
          "(transitions) | same-machine baseline: bias difference; accuracy difference | calls / tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for m in METHODS:
        for cond in ("ambig", "disambig"):
            metric = "s_AMB" if cond == "ambig" else "s_DIS"
            name = None
            for bench in (f"bbq-{cond}", f"bbq-{cond}-20"):
                if (here / "qwen15" / f"{bench}--{m}" / "comparison.json").exists():
                    name = f"{bench}--{m}"
            if name is None:
                continue
            c = load(here / "qwen15" / name / "comparison.json")
            b, d = row(c, cond, metric, "method"), row(c, cond, metric, "difference")
            a, ad = row(c, cond, "accuracy", "method"), row(c, cond, "accuracy", "difference")
            t = c["transitions"][cond]["counts"]
            same = ""
            s = load(here / "rerun" / f"{name}.comparison.json")
            if s:
                sd, sa = row(s, cond, metric, "difference"), row(s, cond, "accuracy", "difference")
                same = (f"{ci(sd['value'], sd['ci_low'], sd['ci_high'])}, {p(sd.get('p_value'))}; "
                        f"acc {sa['value']:+.3f}, {p(sa.get('p_value'))}")
            cost = c["cost"]
            calls = cost["calls_per_item"]["ratio"]
            toks = cost.get("tokens_per_item", {}).get("ratio")
            costs = f"{calls:.2f}x / {toks:.2f}x" if toks else f"{calls:.2f}x"
            print(f"| {m} | {cond} | {c['n_matched']} | {b['value']:+.3f} | "
                  f"{ci(d['value'], d['ci_low'], d['ci_high'])}, {p(d.get('p_value'))} | "
                  f"{a['value']:.3f}: {ci(ad['value'], ad['ci_low'], ad['ci_high'])}, {p(ad.get('p_value'))} "
                  f"(c→i {t['correct->incorrect']}, i→c {t['incorrect->correct']}) | {same} | "
                  f"{costs} |")


def top(rows, **kw):
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def cell(r, fmt="{:.2f}"):
    return ci(r["value"], r["ci_low"], r["ci_high"], fmt) if r else "—"


def students_table():
    print("| model | held-out he/she gap | mean \\|log ratio\\| | occupation probe, explicit gap | "
          "HolisticBias | BBQ disambiguated accuracy | BBQ ambiguous unparseable | MMLU | "
          "gap vs base: paired difference | training |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ["qwen15"] + STUDENTS:
        d = here / name
        if not d.is_dir():  # a training not run yet
            continue
        op = (load(d / "occupation-pronouns" / "metrics.json") or {}).get("rows", [])
        oc = (load(d / "occupation" / "metrics.json") or {}).get("rows", [])
        hb = (load(d / "holistic-gender" / "metrics.json") or {}).get("rows", [])
        bd = (load(d / "bbq-disambig" / "metrics.json") or {}).get("rows", [])
        ba = load(d / "bbq-ambig" / "metrics.json") or {}
        cap = (load(d / "capability" / "metrics.json") or {}).get("rows", [])
        comp = load(d / "occupation-pronouns" / "comparison.json")
        gapd = "—"
        if comp:
            r = next((r for r in comp["rows"] if r["metric"] == "gap_m_minus_f" and r["run"] == "difference"), None)
            if r:
                gapd = f"{cell(r)}, {p(r.get('p_value'))}"
        fd = load(here / "train" / name / "fairdistill.json")
        train = f"{fd['global_step']} steps, {fd['train_seconds']:,.0f} s" if fd else ""
        counts = ba.get("counts", {})
        unp = "—" if counts.get("n_unparsed") is None else f"{counts['n_unparsed']} of {counts['n_items']}"
        print(f"| {name} | {cell(top(op, metric='gap_m_minus_f'))} | {cell(top(op, metric='mean_abs_log_ratio'))} | "
              f"{cell(top(oc, probe='explicit', metric='female_gap'))} | "
              f"{cell(top(hb, level='overall', metric='likelihood_bias'))} | "
              f"{cell(top(bd, category='overall', metric='accuracy'))} | "
              f"{unp} | "
              f"{cell(top(cap, top=True, metric='acc'))} | {gapd} | {train} |")

    print("\nBetween students, occupation by occupation on the held-out probe (student − reference; "
          "python evidence/qwen-study/between_students.py):\n")
    print("| student − reference | he/she gap: paired difference | mean \\|log ratio\\|: paired difference |")
    print("|---|---|---|")
    for f in sorted((here / "train").glob("*-vs-*.occupation-pronouns.comparison.json")):
        rows = {r["metric"]: r for r in load(f)["rows"] if r["run"] == "difference"}
        a, b = f.name.split(".")[0].split("-vs-")
        print(f"| {a} − {b} | " + " | ".join(
            f"{cell(rows.get(m))}, {p(rows[m].get('p_value'))}" if m in rows else "—"
            for m in ("gap_m_minus_f", "mean_abs_log_ratio")) + " |")


def self_table():
    """The self-distillation's teacher choice and its summary (agreement, metrics, comparisons), as written."""
    d = here / "train" / "qwen15-self-distilled"
    for f in ("teacher_choice.json", "self_distill.json"):
        data = load(d / f)
        print(f"## {f}\n" + (json.dumps(data, indent=1, default=str) if data else "(not written yet)"))


if __name__ == "__main__":
    {"methods": methods_table, "students": students_table, "self": self_table}[sys.argv[1]]()
