"""Paired comparisons between FairDistillation students (not against the base model, which the study
file does): each rule student against the no-rule control, and the he/she student with the
rule-balance term against the published objective, occupation by occupation on the held-out probe.

    python evidence/qwen-study/between_students.py    # -> train/<a>-vs-<b>.occupation-pronouns.comparison.json

A student's probe results (results.jsonl, not committed) are rebuilt from its response-cache
snapshot into between/NAME (not committed): the adapter is merged into the base model once (train/NAME/student, not committed) and the
30 probe items are answered from the cache, so the figures are those the study computed (any item the
cache lacks is computed here, and the run's meta says so).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
root = here.parents[1]
# (control or reference, student): the comparison is student − reference
PAIRS = [("qwen15-fd-no-rule", "qwen15-fd-he-she"), ("qwen15-fd-no-rule", "qwen15-fd-gender"),
         ("qwen15-fd-no-rule", "qwen15-fd-published-objective"),
         ("qwen15-fd-published-objective", "qwen15-fd-he-she")]
SHORT = {"qwen15-fd-no-rule": "no-rule", "qwen15-fd-he-she": "he-she", "qwen15-fd-gender": "gender",
         "qwen15-fd-published-objective": "published-objective"}


def rebuild(name: str) -> Path:
    """The student's occupation-pronouns run folder with its results.jsonl."""
    study_run = here / name / "occupation-pronouns"
    run = here / "between" / name  # not the study's folder: its committed config and metrics stay as they are
    if (run / "results.jsonl").exists():
        return run
    student = here / "train" / name / "student"
    if not (student / "config.json").exists():
        from fairdistill.study import _merge_adapter

        print(f"merging the {name} adapter into the base model (once)", flush=True)
        _merge_adapter("qwen2.5-coder-1.5b", here / "train" / name / "adapter", student)
    cache = here / name / "responses.sqlite"
    if not cache.exists():
        shutil.copy(here / name / "responses.snapshot.sqlite", cache)
    ident = json.loads((study_run / "config.json").read_text())["identity"]["model"]
    # the study's identity: same model path, dtype and backend options, so the cache keys match
    subprocess.run([sys.executable, "-m", "fairdistill", "eval", "occupation-pronouns", "--model", ident["model"],
                    "--dtype", ident["dtype"], "--backend-option", "rescore_margin=0", "--cache", str(cache), "--out", str(run),
                    "--no-progress"], check=True, cwd=root, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return run


def main() -> None:
    from fairdistill.compare import compare

    for ref, student in PAIRS:
        a, b = rebuild(ref), rebuild(student)
        out = here / "train" / f"{SHORT[student]}-vs-{SHORT[ref]}.occupation-pronouns.comparison.json"
        c = compare(a.relative_to(root), b.relative_to(root), seed=0)
        out.write_text(json.dumps(c, indent=2, default=str))
        d = {r["metric"]: r for r in c["rows"] if r.get("run") == "difference"}
        parts = []
        for m in ("gap_m_minus_f", "mean_abs_log_ratio"):
            r = d[m]
            pv = "p < 0.001" if r["p_value"] < 0.001 else f"p = {r['p_value']:.2g}"
            parts.append(f"{m} {r['value']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}], {pv}")
        print(f"{SHORT[student]} − {SHORT[ref]}: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    os.chdir(root)
    main()
