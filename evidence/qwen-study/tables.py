"""Print the README's Qwen-study tables (markdown) from this folder's metrics and comparisons.

    python evidence/qwen-study/tables.py methods    # inference-time methods against the plain model
    python evidence/qwen-study/tables.py students   # FairDistillation students against the base model
    python evidence/qwen-study/tables.py self       # self-distillation: teacher, untrained, student
    python evidence/qwen-study/tables.py panel      # adjudication: what the panel's judges said, letters
    python evidence/qwen-study/tables.py cost       # the study's compute time: every run and training

The first three read only committed files (metrics.json, comparison.json, fairdistill.json), so they can
be made again on a fresh clone without the caches. ``panel`` reads the adjudication runs' results.jsonl,
which is not committed; `bash evidence/qwen-study/resume.sh methods adjudication` rebuilds it from the
committed cache snapshot without asking the model anything.
"""
import json
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
METHODS = ["reprompting", "prefix-1", "prefix-2", "prefix-3", "prefix-4", "prefix-5", "prefix-6",
           "explanation", "intent-aware", "adjudication"]
STUDENTS = ["qwen15-fd-he-she", "qwen15-fd-gender", "qwen15-fd-published-objective", "qwen15-fd-no-rule",
            "qwen15-fd-he-she-lr3e-4", "qwen15-fairdistill-he-she", "qwen15-self-distilled"]


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
    """The self-distillation: how its teacher was chosen, agreement with the teacher (student, untrained
    model, best constant answer) with Wilson CIs and McNemar tests, the BBQ metrics of teacher, untrained
    model and student on the held-out items with their paired differences, and the transfer benchmark."""
    d = here / "train" / "qwen15-self-distilled"
    choice, sd = load(d / "teacher_choice.json"), load(d / "self_distill.json")
    if choice:
        print(f"Teacher: {choice['method']} ({choice['reason']})\n")
    if not sd:
        print("(self_distill.json not written yet: the training or its evaluation is still running)")
        return
    print(f"{sd['n_items']} items, {sd['n_train']} for training ({sd['sft_examples']} SFT examples), "
          f"{sd['n_heldout']} held out (split: {sd['config'].get('split')}, seed {sd['config'].get('seed')})\n")
    for split in ("heldout", "train"):
        ag = (sd.get(split) or {}).get("agreement")
        if not ag:
            continue
        print(f"Agreement with the teacher, {split} items (n = {ag['n']}):\n")
        # the agreement rows with their Wilson intervals, as the self-distillation wrote them (summary/)
        rows = [r for r in load(d / "summary" / "metrics.json")["rows"] if r["split"] == split]
        calls = {r["model"]: r["value"] for r in rows if r["metric"] == "calls per item"}
        print("| model | agreement [95% CI] | student vs this: McNemar | calls per item |\n|---|---|---|---|")
        for r in (r for r in rows if r["metric"] == "agreement with teacher"):
            who = r["model"].split(" ")[0]
            test = "" if who == "student" else (
                f"student only {ag[f'student_vs_{who}_mcnemar']['student_only']}, this only "
                f"{ag[f'student_vs_{who}_mcnemar'][f'{who}_only']}, {p(r['p (student vs this)'])}")
            print(f"| {r['model']} | {cell(r, '{:.3f}')} | {test} | {calls.get(who, 0)} |")
        ch = ag["where_teacher_changed_answer"]
        print(f"\nWhere the teacher's answer differs from the untrained model's: {ch['n']} items, the student "
              f"gives the teacher's answer on {ch['student_matches_teacher']}. Answer roles: "
              + "; ".join(f"{who} {ag['answers'][who]}" for who in ("teacher", "untrained", "student"))
              + f". The teacher's calls per item: {calls.get('teacher')}.\n")
        metrics, comps = sd[split]["metrics"], sd[split]["comparisons"]
        print("| condition | metric | teacher | untrained | student | teacher − untrained | student − untrained |")
        print("|---|---|---|---|---|---|---|")
        for cond, per in metrics.items():
            for metric in ("accuracy", "s_AMB" if cond == "ambig" else "s_DIS"):
                def val(who):  # a run's own rows call the bias score bias_score; comparisons name it s_AMB / s_DIS
                    name = "accuracy" if metric == "accuracy" else "bias_score"
                    r = next((r for r in per[who] if r["metric"] == name and r.get("condition", cond) == cond), None)
                    return cell(r, "{:.3f}") if r else "—"

                def diff(key):
                    r = next((r for r in comps[cond][key] if r["metric"] == metric
                              and r.get("condition", cond) == cond), None)
                    return f"{cell(r, '{:+.3f}')}, {p(r.get('p_value'))}" if r else "—"
                print(f"| {cond} | {metric} | {val('teacher')} | {val('untrained')} | {val('student')} | "
                      f"{diff('teacher_minus_untrained')} | {diff('student_minus_untrained')} |")
        print()
    letters_table(d / "heldout")
    for key, t in (sd.get("transfer") or {}).items():
        print(f"Transfer, {key} (not trained on), untrained model and student side by side"
              + ("" if t.get("student_minus_untrained") else f" ({t.get('comparison')})") + "\n")
        print("| row | untrained | student | paired difference |\n|---|---|---|---|")
        diffs = {r["metric"]: r for r in t.get("student_minus_untrained") or []}
        ident = lambda r: tuple((k, r.get(k)) for k in ("probe", "group", "gender", "condition", "metric"))  # noqa: E731
        for r in t["untrained"]["rows"]:
            s_ = next((x for x in t["student"]["rows"] if ident(x) == ident(r)), None)
            dr = diffs.get(r["metric"])
            label = " ".join(str(v) for _, v in ident(r) if v is not None)
            print(f"| {label} | {cell(r, '{:.3f}')} | {cell(s_, '{:.3f}') if s_ else '—'} | "
                  f"{(cell(dr, '{:+.3f}') + ', ' + p(dr.get('p_value'))) if dr else '—'} |")
        print()


def letters_table(heldout):
    """The letters of the held-out rotation answers and how often all rotations pick the same option (a
    model locked on one letter would show no effect of anything). Reads results.jsonl, not committed:
    `resume.sh train qwen15-self-distilled` rebuilds it from the cache snapshots."""
    from collections import Counter

    print("| model | letters of the rotation answers | same option in every rotation |\n|---|---|---|")
    for who in ("teacher", "untrained", "student"):
        files = [heldout / c / who / "results.jsonl" for c in ("ambig", "disambig")]
        if not all(f.exists() for f in files):
            print(f"| {who} | results.jsonl missing | |")
            continue
        letters, same, n = Counter(), 0, 0
        for f in files:
            for line in f.read_text().splitlines():
                rots = json.loads(line).get("rotations") or []
                letters.update(x.get("letter") or "unparsed" for x in rots)
                options = {x.get("option") for x in rots}
                same += len(options) == 1 and None not in options
                n += 1
        total = sum(letters.values())
        print(f"| {who} | " + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(letters.items()))
              + f" | {same} of {n} |")
    print()


def panel_table():
    """Adjudication, counted over every rotation's ``method_extra``: each judge's verdicts, which member's
    answer became final (and how often it was right), how often no answer was accepted (the margin
    fallback), and the letters of the final answers."""
    from collections import Counter, defaultdict

    for cond in ("ambig", "disambig"):
        f = here / "qwen15" / f"bbq-{cond}-20--adjudication" / "results.jsonl"
        if not f.exists():
            print(f"## {cond}: {f.relative_to(here)} missing (resume.sh methods adjudication rebuilds it)\n")
            continue
        verdicts, finals, right, letters = defaultdict(Counter), Counter(), Counter(), Counter()
        rotations = fallback = accepted = same = 0
        items = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        for it in items:
            options = set()
            for rot in it.get("rotations") or [it]:
                x = rot.get("method_extra") or {}
                if not x:
                    continue
                rotations += 1
                for j in x.get("judgements", []):
                    verdicts[j["judge"]][j["verdict"]] += 1
                accepted += sum(bool(v) for v in (x.get("accepted") or {}).values())
                fallback += bool(x.get("fallback"))
                finals[x.get("final_member")] += 1
                right[x.get("final_member")] += rot.get("option") == it["label"]
                letters[rot.get("letter") or "unparsed"] += 1
                options.add(rot.get("option"))
            same += len(options) == 1 and None not in options
        print(f"## {cond}: {len(items)} items, {rotations} rotation answers\n")
        print("| judge | reject (BIASED) | accept (UNBIASED) | abstain |\n|---|---|---|---|")
        for judge, c in verdicts.items():
            print(f"| {judge} | {c['reject']} | {c['accept']} | {c['abstain']} |")
        print(f"\nanswers accepted: {accepted}; rotations decided by the margin fallback: {fallback} of {rotations}")
        print("\n| final answer from | rotations | correct |\n|---|---|---|")
        for m, n in finals.most_common():
            print(f"| {m} | {n} | {right[m]} |")
        print("\nfinal letters: " + ", ".join(f"{k} {v} ({v / rotations:.0%})" for k, v in sorted(letters.items()))
              + f"; the same option in every rotation on {same} of {len(items)} items\n")


def cost_table():
    """The study's run time on this project's machines (one CPU thread per process): the compute seconds
    each run recorded (``meta.timing``; a resumed run adds up its sessions) and each training's, grouped by
    model and by the machine's bf16 units. Cache hits cost nothing and are not counted again."""
    from collections import defaultdict

    runs, total = defaultdict(lambda: [0, 0.0]), defaultdict(float)
    skip = {"rerun", "parts", "between"}     # the rerun is a control on machines, not part of the study
    for f in sorted(here.rglob("metrics.json")):
        rel = f.relative_to(here)
        if rel.parts[0] in skip or rel.parts[0] == "train" and len(rel.parts) < 4:
            continue
        t = (load(f).get("meta") or {}).get("timing") or {}
        if not t.get("seconds"):
            continue
        group = rel.parts[1] + " (self-distillation evaluation)" if rel.parts[0] == "train" else rel.parts[0]
        machine = (t.get("environment") or {}).get("cpu_bf16") or "not recorded"
        runs[group, machine][0] += 1
        runs[group, machine][1] += t["seconds"]
        total[machine] += t["seconds"]
    for f in sorted((here / "train").glob("*/study_trained.json")):
        secs = load(f).get("seconds") or 0.0
        runs[f.parent.name + " (training)", "see study.log"][0] += 1
        runs[f.parent.name + " (training)", "see study.log"][1] += secs
        total["training"] += secs
    print("| model / part | machine (bf16 units) | runs | CPU-core hours |\n|---|---|---|---|")
    for (group, machine), (n, secs) in sorted(runs.items()):
        print(f"| {group} | {machine} | {n} | {secs / 3600:.2f} |")
    print("\n" + ", ".join(f"{m}: {s / 3600:.1f} h" for m, s in sorted(total.items()))
          + f"; in all {sum(total.values()) / 3600:.1f} CPU-core hours\n")


if __name__ == "__main__":
    {"methods": methods_table, "students": students_table, "self": self_table, "panel": panel_table,
     "cost": cost_table}[sys.argv[1]]()
