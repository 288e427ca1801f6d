"""Threads or processes: BBQ items/s with 1 process x T threads vs P processes x 1 thread.

Both configurations are real ``fairdistill eval bbq`` runs (log-likelihood mode) of the same seeded
sample: one plain process with ``OMP_NUM_THREADS=T``, and ``torchrun --nproc_per_node P`` (data
parallel: every process holds a model replica and scores its share of the 64-item batches; gloo on
CPU). Prints items/s without model loading (the run's ``seconds_this_session``: for the sharded run,
the slowest rank's), wall time with loading, and whether every item got the same prediction.

    python speed/parallel_speed.py --model smollm2 --limit 30            # 7 categories x 30 = 210 items
    python speed/parallel_speed.py --model smollm2 --threads 2 --procs 2 --out /tmp/par
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CATS = "Age,Disability_status,Gender_identity,Nationality,Physical_appearance,Religion,Sexual_orientation"


def run(cmd: list[str], threads: int, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # a resumed run would time nothing
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    preds = {json.loads(x)["id"]: json.loads(x)["pred"] for x in (out / "results.jsonl").read_text().splitlines()}
    return {"items": meta["n_items"], "seconds": meta["seconds_this_session"], "wall": wall, "preds": preds,
            "items_per_s": meta["n_items"] / max(meta["seconds_this_session"], 1e-9)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--limit", type=int, default=30, help="items per category (seeded sample)")
    ap.add_argument("--categories", default=CATS)
    ap.add_argument("--threads", type=int, default=2, help="threads of the single process")
    ap.add_argument("--procs", type=int, default=2, help="processes (1 thread each) of the sharded run")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="parallel_speed-"))
    ev = ["eval", "bbq", "--model", args.model, "--categories", args.categories, "--limit", str(args.limit),
          "--mode", "loglik", "--dtype", args.dtype, "--no-progress"]
    one = run([sys.executable, "-m", "fairdistill", *ev, "--out", str(out / "threads")], args.threads, out / "threads")
    many = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.procs),
                "-m", "fairdistill", *ev, "--out", str(out / "procs")], 1, out / "procs")
    same = sum(one["preds"][i] == many["preds"].get(i) for i in one["preds"])
    print(f"{'configuration':<28}{'items':>7}{'items/s':>10}{'wall s (with loading)':>24}")
    for name, r in ((f"1 process x {args.threads} threads", one), (f"{args.procs} processes x 1 thread", many)):
        print(f"{name:<28}{r['items']:>7}{r['items_per_s']:>10.2f}{r['wall']:>24.1f}")
    print(f"ratio (processes / threads): {many['items_per_s'] / one['items_per_s']:.2f}x; "
          f"same prediction on {same}/{len(one['preds'])} items")
    (out / "summary.json").write_text(json.dumps({
        "model": args.model, "items": one["items"], "threads": args.threads, "procs": args.procs,
        "items_per_s": {"threads": round(one["items_per_s"], 3), "procs": round(many["items_per_s"], 3)},
        "wall_s": {"threads": round(one["wall"], 1), "procs": round(many["wall"], 1)}, "same_prediction": same,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
