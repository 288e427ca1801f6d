"""Built-in models on BBQ: items/s, peak RSS and argmax agreement of float32, bfloat16 and the default.

Each configuration is one real ``fairdistill eval bbq`` run (the CLI, resumable run folders) in a
fresh worker process, so peak RSS is its own; items/s excludes model loading (the run's own
``seconds_this_session``). Agreement is per item, against the float32 run on the same items. With
``--out DIR`` finished configurations are kept and reused on a rerun (delete a folder to re-measure it).

    python speed/model_speed.py                                  # 3 models, 50 items/category loglik
    python speed/model_speed.py --models qwen2.5-coder-1.5b --limit 50 --gen-limit 5 --threads 2

Configurations: ``float32``; ``bfloat16`` (pure, no re-scoring); ``auto`` (the default: bfloat16
where the CPU/GPU has native bf16, items whose top-two option margin is under the backend's
``rescore_margin`` re-scored in float32). Generation mode (``--gen-limit`` items/category, greedy,
lettered prompt) is timed for float32 and bfloat16 / auto (the re-scoring applies to scoring only).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CATS = "Age,Disability_status,Gender_identity,Nationality,Physical_appearance,Religion,Sexual_orientation"

WORKER = r"""
import json, resource, sys
from fairdistill.cli import main
rc = main(sys.argv[2:])
json.dump({"rc": rc, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}, open(sys.argv[1], "w"))
"""


def run(model: str, dtype: str, mode: str, limit: int, out: Path, threads: int, extra: list[str]) -> dict:
    stats = out / "worker.json"
    done = stats.exists() and (out / "metrics.json").exists() and \
        json.loads((out / "metrics.json").read_text())["meta"]["new_items_this_session"] > 0
    if not done and out.exists():  # a partial folder would resume and time only the rest
        shutil.rmtree(out)
    args = ["eval", "bbq", "--model", model, "--dtype", dtype, "--mode", mode, "--limit", str(limit),
            "--categories", CATS, "--out", str(out), "--no-progress", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if not done:
            subprocess.run([sys.executable, "-c", WORKER, str(stats), *args], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    w = json.loads(stats.read_text())
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    preds = {}
    with open(out / "results.jsonl") as f:
        for line in f:
            r = json.loads(line)
            preds[r["id"]] = r["pred"]
    config = json.loads((out / "config.json").read_text())
    return {"items": meta["n_items"], "seconds": meta["seconds_this_session"], "peak_rss_gb": w["peak_rss_gb"],
            "preds": preds, "describe": config["identity"]["model"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    ap.add_argument("--limit", type=int, default=50, help="log-likelihood items per category (7 categories)")
    ap.add_argument("--gen-limit", type=int, default=5, help="generation items per category (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="keep the run folders here (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    a = ap.parse_args()
    root = a.out or Path(tempfile.mkdtemp(prefix="fd-model-speed-"))
    table = []
    for model in a.models.split(","):
        for mode, limit, dtypes in (("loglik", a.limit, ("float32", "bfloat16", "auto")),
                                    ("generate", a.gen_limit, ("float32", "auto"))):
            if not limit:
                continue
            base = None
            for dt in dtypes:
                extra = ["--backend-option", "rescore_margin=0"] if dt == "bfloat16" else []
                r = run(model, dt, mode, limit, root / f"{model}-{mode}-{dt}", a.threads, extra)
                base = base or r
                agree = sum(r["preds"][k] == base["preds"][k] for k in base["preds"]) / len(base["preds"])
                row = {"model": model, "mode": mode, "dtype": dt, "resolved": r["describe"].get("dtype"),
                       "rescore_margin": r["describe"].get("fp32_rescore_margin", 0), "items": r["items"],
                       "items_per_s": round(r["items"] / r["seconds"], 3),
                       "speedup_vs_fp32": round(base["seconds"] / r["seconds"], 2),
                       "peak_rss_gb": round(r["peak_rss_gb"], 2), "argmax_agreement_vs_fp32": round(agree, 4),
                       "disagreements": sum(r["preds"][k] != base["preds"][k] for k in base["preds"])}
                table.append(row)
                print(json.dumps(row), flush=True)
    cols = list(table[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in table:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    if a.json:
        a.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
