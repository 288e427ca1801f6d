"""BBQ log-likelihood speed: fairdistill vs lm-evaluation-harness, same model, same items, same protocol.

Prints items/s for each tool, the ratio, per-item prediction agreement (same argmax option) and
peak RSS. Each (tool, model) pair runs in a fresh worker process so peak memory is its own; the
model weights are identical across tools (random weights are built from a fixed seed).

    python speed/bbq_speed.py                       # SmolLM2 + GPT-2-small-size, 20 items/category, helm
    python speed/bbq_speed.py --limit 50 --protocol dataset --models smollm2

Also: HolisticBias perplexity scoring through fairdistill's batched path vs a straightforward
per-sentence transformers loop (``--holistic N`` sentences).

lm-evaluation-harness runs a local task definition over the same jsonl subset: its own BBQ
``utils.py`` functions with ``dataset_path: json``; ``--protocol helm`` uses lm-eval's 12-choice
``doc_to_choice`` (its default), ``--protocol dataset`` the item's three options.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CATS = ["Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance", "Religion",
        "Sexual_orientation"]


def build_model(name: str):
    """Return (model, tokenizer). ``gpt2-small-random``: GPT-2 small architecture, seeded random weights."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from fairdistill.backends.builtin import resolve_builtin

    if name == "smollm2":
        from transformers import AutoModelForCausalLM

        path = resolve_builtin("smollm2")
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)
    if name == "gpt2-small-random":
        tok = AutoTokenizer.from_pretrained(resolve_builtin("smollm2"))  # a real BPE vocabulary, offline
        torch.manual_seed(0)
        cfg = GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                         bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
        return GPT2LMHeadModel(cfg).eval(), tok
    raise SystemExit(f"unknown model {name}")


def make_subset(limit: int, seed: int, out: Path) -> Path:
    from fairdistill.benchmarks.bbq import BBQ

    out.mkdir(parents=True, exist_ok=True)
    for c in CATS:
        rows = BBQ(categories=[c], limit=limit, seed=seed).items()
        with open(out / f"{c}.jsonl", "w") as f:
            for r in rows:
                r = dict(r)
                r.pop("id")
                f.write(json.dumps(r) + "\n")
    return out


LM_EVAL_UTILS = """
from lm_eval.tasks.bbq.utils import *  # noqa: F401,F403  (lm-eval's own BBQ logic)
from lm_eval.tasks.bbq.utils import process_docs as _pd


def process_docs_flat(dataset):
    # our json rows carry nested metadata whose keys vary; keep what lm-eval's helpers read
    return _pd(dataset)


def doc_to_choice_dataset(doc):
    return [doc["ans0"], doc["ans1"], doc["ans2"]]
"""


def lm_eval_task(subset: Path, protocol: str, work: Path) -> Path:
    files = [str(subset / f"{c}.jsonl") for c in CATS]
    choice = "!function utils.doc_to_choice" if protocol == "helm" else "!function utils.doc_to_choice_dataset"
    target = "!function utils.doc_to_target" if protocol == "helm" else "label"
    yaml = f"""task: fd_bbq_speed
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(files)}
test_split: test
output_type: multiple_choice
process_docs: !function utils.process_docs_flat
doc_to_text: "{{{{context}}}}\\n\\nQ: {{{{question}}}}\\nA:"
doc_to_target: {target}
doc_to_choice: {choice}
metric_list:
  - metric: acc
"""
    work.mkdir(parents=True, exist_ok=True)
    (work / "fd_bbq_speed.yaml").write_text(yaml)
    (work / "utils.py").write_text(LM_EVAL_UTILS)
    return work


def worker(tool: str, model_name: str, subset: Path, protocol: str, batch_size: int, out: Path) -> None:
    import torch

    model, tok = build_model(model_name)
    preds: dict[str, int] = {}
    t0 = time.perf_counter()
    if tool == "fairdistill":
        from fairdistill.backends.hf import HFBackend
        from fairdistill.benchmarks.base import EvalContext
        from fairdistill.benchmarks.bbq import BBQ

        be = HFBackend(model, tok, name=model_name, batch_size=batch_size)
        bench = BBQ(data=str(subset), mode="loglik", options=protocol)
        items = bench.items()
        t0 = time.perf_counter()
        for i in range(0, len(items), batch_size):
            for rec in bench.evaluate(items[i:i + batch_size], EvalContext(backend=be)):
                preds[rec["id"]] = rec["pred"]
    else:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        from fairdistill.benchmarks.bbq import unknown_index

        task_dir = lm_eval_task(subset, protocol, out.parent / "lm_eval_task")
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device="cpu")
        t0 = time.perf_counter()
        res = lm_eval.simple_evaluate(model=lm, tasks=["fd_bbq_speed"], task_manager=TaskManager(include_path=str(task_dir)),
                                      log_samples=True, num_fewshot=0)
        for s in res["samples"]["fd_bbq_speed"]:
            doc = s["doc"]
            lls = [r[0] for r in s["filtered_resps"]]
            k = max(range(len(lls)), key=lambda j: lls[j])
            if protocol == "helm":
                unk = unknown_index(doc)
                people = [i for i in range(3) if i != unk]
                k = people[k] if k < 2 else unk
            preds[f"{doc['category']}-{doc['example_id']}"] = k
    elapsed = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps({"tool": tool, "model": model_name, "seconds": elapsed, "n": len(preds),
                               "peak_rss_mb": peak_mb, "preds": preds, "threads": torch.get_num_threads()}))


def holistic(n: int, model_name: str, batch_size: int) -> dict:
    import math

    import torch

    from fairdistill.backends.hf import HFBackend
    from fairdistill.benchmarks.holistic_bias import generate_sentences

    model, tok = build_model(model_name)
    rows = generate_sentences("v1.1")
    import random

    texts = [r["text"] for r in random.Random(0).sample(rows, n)]
    be = HFBackend(model, tok, name=model_name, batch_size=batch_size)
    t0 = time.perf_counter()
    ours = be.sequence_logprob(texts)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = []
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    with torch.inference_mode():
        for t in texts:  # the straightforward loop: one sentence per forward pass
            ids = torch.tensor([[start] + tok(t, add_special_tokens=False)["input_ids"]])
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            naive.append(float(lp.gather(1, ids[0, 1:, None]).sum()))
    t_naive = time.perf_counter() - t0
    diff = max(abs(a[0] - b) for a, b in zip(ours, naive))
    return {"n": n, "fairdistill_s": t_ours, "loop_s": t_naive, "ratio": t_naive / t_ours, "max_abs_logprob_diff": diff,
            "ppl_example": math.exp(-ours[0][0] / ours[0][1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,gpt2-small-random")
    ap.add_argument("--limit", type=int, default=20, help="items per category (7 categories)")
    ap.add_argument("--protocol", default="helm", choices=["helm", "dataset"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--holistic", type=int, default=200, help="HolisticBias sentences for the perplexity comparison (0: skip)")
    ap.add_argument("--tools", default="fairdistill,lm-eval")
    ap.add_argument("--worker", nargs=6, metavar=("TOOL", "MODEL", "SUBSET", "PROTOCOL", "BS", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        tool, model, subset, protocol, bs, out = a.worker
        worker(tool, model, Path(subset), protocol, int(bs), Path(out))
        return
    work = Path(tempfile.mkdtemp(prefix="bbq_speed_"))
    subset = make_subset(a.limit, 0, work / "bbq")
    n_items = sum(1 for c in CATS for _ in open(subset / f"{c}.jsonl"))
    print(f"BBQ {a.protocol} protocol, {n_items} items ({a.limit}/category x {len(CATS)}), batch size {a.batch_size}, "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    for model in a.models.split(","):
        res = {}
        for tool in a.tools.split(","):
            out = work / f"{tool}-{model}.json"
            subprocess.run([sys.executable, __file__, "--worker", tool, model, str(subset), a.protocol,
                            str(a.batch_size), str(out)], check=True)
            res[tool] = json.loads(out.read_text())
        print(f"\n{model}")
        for tool, r in res.items():
            print(f"  {tool:12s} {r['n'] / r['seconds']:8.2f} items/s  {r['seconds']:8.1f} s  peak RSS {r['peak_rss_mb']:7.0f} MB")
        if len(res) == 2:
            f, l = res["fairdistill"], res["lm-eval"]
            ratio = (f["n"] / f["seconds"]) / (l["n"] / l["seconds"])
            common = set(f["preds"]) & set(l["preds"])
            agree = sum(f["preds"][k] == l["preds"][k] for k in common)
            print(f"  speed ratio fairdistill / lm-eval: {ratio:.2f}x")
            print(f"  prediction agreement: {agree}/{len(common)} ({100 * agree / max(len(common), 1):.1f}%)")
            for k in sorted(common):
                if f["preds"][k] != l["preds"][k]:
                    print(f"    disagree {k}: fairdistill {f['preds'][k]} lm-eval {l['preds'][k]}")
    if a.holistic:
        for model in a.models.split(","):
            h = holistic(a.holistic, model, a.batch_size)
            print(f"\nHolisticBias perplexity, {model}, {h['n']} sentences: fairdistill {h['fairdistill_s']:.1f} s, "
                  f"per-sentence loop {h['loop_s']:.1f} s, ratio {h['ratio']:.2f}x, max |logprob diff| {h['max_abs_logprob_diff']:.2e}")


if __name__ == "__main__":
    main()
