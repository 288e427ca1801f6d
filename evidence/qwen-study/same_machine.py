"""Paired comparisons of method runs against a baseline computed on the same machine.

The same model and prompts give different answers on about 4% of BBQ items on two kinds of CPU (AMX
and AVX512-BF16 bf16 kernels round differently, and near-ties fall either way). The study's plain runs
were computed on an AVX512-BF16 machine; `rerun/` holds the plain runs computed again, without the
study's cache, on the AMX machine that computed the later method runs:

    fairdistill eval bbq --model qwen2.5-coder-1.5b --mode generate -o condition=ambig -o permute=cyclic \\
      --limit 50 --backend-option rescore_margin=0 --cache evidence/qwen-study/rerun/responses.sqlite \\
      --out evidence/qwen-study/rerun/bbq-ambig          # and condition=disambig -> rerun/bbq-disambig

    python evidence/qwen-study/same_machine.py bbq-ambig--prefix-1 bbq-disambig--prefix-1 ...

writes `rerun/<run>.comparison.json` (the method run against the same-machine baseline) for each named
run of `qwen15/`, and `rerun/noise-<bench>.comparison.json` (the study's baseline against the rerun: the
machine's own effect). Both runs need their results.jsonl (rebuilt from the caches on a fresh machine).
"""
import json
import sys
from pathlib import Path

from fairdistill.compare import compare

here = Path(__file__).resolve().parent
for bench in ("bbq-ambig", "bbq-disambig"):
    if (here / "rerun" / bench / "results.jsonl").exists():
        c = compare(here / "qwen15" / bench, here / "rerun" / bench, seed=0)
        (here / "rerun" / f"noise-{bench}.comparison.json").write_text(json.dumps(c, indent=2, default=str))
for run in sys.argv[1:]:
    bench = run.split("--")[0]
    c = compare(here / "rerun" / bench, here / "qwen15" / run, seed=0)
    (here / "rerun" / f"{run}.comparison.json").write_text(json.dumps(c, indent=2, default=str))
    print(run, "written")
