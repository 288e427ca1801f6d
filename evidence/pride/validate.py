"""Validate permute=pride against permute=cyclic on the items the committed studies asked under every rotation.

For each study run given (a run folder of the plain model with ``permute: cyclic``), this script:

1. replays the cyclic run from the study's committed response cache (a temporary copy: the snapshot is never
   written) into ``<out>/<name>/cyclic``: the model is asked nothing it was asked before;
2. runs the same items with ``permute: pride`` (default ``pride_sample``) into ``<out>/<name>/pride``, through the
   same cache: the letter log-probs already cached (where rotations tied) are read, the rest computed, one
   forward pass per item and order;
3. compares the two item by item (``fairdistill.compare``: accuracy, s_AMB / s_DIS, stereotyped and
   anti-stereotyped rates, each difference with its paired CI) and counts per-item agreement and calls.

It prints one table and writes ``<out>/validation.json``.

    OMP_NUM_THREADS=1 python evidence/pride/validate.py --out evidence/pride \\
        evidence/qwen-study/qwen15/bbq-ambig evidence/qwen-study/qwen15/bbq-disambig
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="cyclic run folders of a committed study (plain model)")
    ap.add_argument("--out", default="evidence/pride")
    args = ap.parse_args()

    from fairdistill.backends.cache import CachingBackend
    from fairdistill.backends.hf import HFBackend
    from fairdistill.compare import compare
    from fairdistill.runner import RunSpec, execute
    from fairdistill.store import RunStore

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, backends = {}, {}
    for run in map(Path, args.runs):
        cfg = json.loads((run / "config.json").read_text())
        spec0 = cfg["run_spec"]
        ident = cfg["identity"]["model"]
        snapshot = run.parent / "responses.snapshot.sqlite"
        if ident.get("backend") != "hf" or spec0["options"].get("permute") != "cyclic" or not snapshot.exists():
            raise SystemExit(f"{run}: not a cyclic in-process run with a committed cache beside it")
        key = (spec0["model"], ident.get("dtype"))
        if key not in backends:
            tmp = Path(tempfile.mkdtemp()) / "responses.sqlite"
            shutil.copy(snapshot, tmp)
            hf = HFBackend.from_spec(spec0["model"], dtype=ident.get("dtype", "auto"),
                                     rescore_margin=ident.get("fp32_rescore_margin", 0))
            backends[key] = CachingBackend(hf, tmp)
        be = backends[key]
        name = f"{run.parent.name}-{run.name}"
        res = {}
        for mode in ("cyclic", "pride"):
            spec = RunSpec(**{**spec0, "out": out / name / mode,
                              "options": {**spec0["options"], "permute": mode}})
            h0, m0 = be.hits, be.misses
            execute(spec, be, show_progress=False)
            res[mode] = {"hits": be.hits - h0, "computed": be.misses - m0}
        a = {r["id"]: r for r in RunStore(out / name / "cyclic").load_results()}
        b = {r["id"]: r for r in RunStore(out / name / "pride").load_results()}
        agree = sum(a[i]["pred"] == b[i]["pred"] for i in a)
        comp = compare(out / name / "cyclic", out / name / "pride")
        (out / name / "pride" / "comparison.json").write_text(json.dumps(comp, indent=2, default=str))
        calls = {m: sum(r.get("calls", 0) for r in d.values()) / len(d) for m, d in (("cyclic", a), ("pride", b))}
        diffs = {f"{r['condition']}/{r['metric']}": [r["value"], r["ci_low"], r["ci_high"]] for r in comp["rows"]
                 if r.get("run") == "difference"}
        results[name] = {"items": len(a), "agreement": agree / len(a), "agree": agree, "calls_per_item": calls,
                         "cache": res, "differences_pride_minus_cyclic": diffs,
                         "prior": json.loads((out / name / "pride" / "metrics.json").read_text())["pride"]["prior"]}
        print(f"{name}: {len(a)} items, same prediction {agree}/{len(a)} ({agree / len(a):.1%}); calls/item "
              f"cyclic {calls['cyclic']:.2f} pride {calls['pride']:.2f}; prior {results[name]['prior']}")
        for k, (v, lo, hi) in diffs.items():
            flag = "" if lo is None or lo <= 0 <= hi else "  <- CI excludes 0"
            print(f"    {k:32s} {v:+.3f} [{lo:+.3f}, {hi:+.3f}]{flag}")
    old = json.loads((out / "validation.json").read_text()) if (out / "validation.json").exists() else {}
    (out / "validation.json").write_text(json.dumps({**old, **results}, indent=2))  # runs validated earlier stay


if __name__ == "__main__":
    main()
