"""Generation-mode BBQ through fairdistill against a plain transformers loop, in one process.

The same ambiguous BBQ prompts (``--limit`` per category, seeded; lettered question, chat template)
are answered by:

* **plain loop**: ``model.generate`` on left-padded batches of ``--plain-batch`` prompts, greedy, with
  the benchmark's answer length (``max_new_tokens``, 16) and, for reference, 2 new tokens (the
  letter and end-of-turn: the fastest a loop can be, though it would cut longer answers);
* **fairdistill, pure bf16**: the real run (``execute``: benchmark, method, parsing, run folder) with
  float32 checks off (``rescore_margin=0``);
* **fairdistill, auto**: the default, near-tied first tokens decided in float32;
* **fairdistill, float32** (``--float32``): the reference the auto setting is meant to agree with.

All share the one loaded model (bf16 weights; float32 through the backend's exact float32 weights), so
the rates compare computation only. Each configuration is timed ``--repeats`` times, interleaved, after a
warm-up; the fastest time is shown (all are printed). Prints seconds, items/s, ratios and per-item answer
agreement (with the plain loop, and with float32).

    OMP_NUM_THREADS=2 python speed/generation_speed.py --model qwen2.5-coder-1.5b --limit 5 --float32
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--limit", type=int, default=5, help="ambiguous items per category")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="timings per configuration (the fastest is shown)")
    ap.add_argument("--float32", action="store_true", help="also run fairdistill in float32 (slow)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    import torch

    from fairdistill.backends.hf import DEFAULT_FIRST_TOKEN_MARGIN, DEFAULT_RESCORE_MARGIN, HFBackend, native_bf16
    from fairdistill.methods.base import user_turn
    from fairdistill.runner import RunSpec, build_benchmark, execute

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    options = {"mode": "generate", "condition": "ambig"}
    bench = build_benchmark("bbq", options, limit=args.limit, seed=args.seed)
    items = bench.load_items()
    max_new = bench.opts.max_new_tokens
    backend = HFBackend.from_spec(args.model, dtype="bfloat16", rescore_margin=0.0)
    tok, model = backend.tokenizer, backend.model
    prompts = [backend.apply_chat_template([{"role": "user", "content": user_turn(bench.question(r))}]) for r in items]
    n_tokens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]

    def plain_loop(new_tokens: int) -> tuple[float, list[int | None]]:
        tok.padding_side = "left"
        texts: list[str] = []
        t0 = time.perf_counter()
        for i in range(0, len(prompts), args.plain_batch):
            enc = tok(prompts[i:i + args.plain_batch], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            texts += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        secs = time.perf_counter() - t0
        preds = []
        for r, t in zip(items, texts):
            d, _ = bench.parse_answer(r, [0, 1, 2], t.strip())
            preds.append(d)
        return secs, preds

    def fairdistill(margin: float, float32: bool = False) -> tuple[float, list[int | None], dict]:
        backend.rescore_margin = margin
        backend.n_scored = backend.n_rescored = backend.n_first_fp32 = backend.n_regenerated = 0  # this run's counts
        with tempfile.TemporaryDirectory() as tmp:
            spec = RunSpec(model=args.model, benchmark="bbq", options=options, limit=args.limit, seed=args.seed,
                           out=Path(tmp) / "run")
            t0 = time.perf_counter()
            if float32:
                with backend.float32():
                    _, metrics = execute(spec, backend, show_progress=False)
            else:
                _, metrics = execute(spec, backend, show_progress=False)
            secs = time.perf_counter() - t0
            recs = {json.loads(line)["id"]: json.loads(line) for line in open(Path(tmp) / "run" / "results.jsonl")}
        return secs, [recs[r["id"]]["pred"] for r in items], metrics["meta"].get("backend_stats") or {}

    # warm-up: first calls pay one-time allocations, and the first float32 pass maps the float32 weights
    plain_loop(2)
    from fairdistill.backends.base import GenerationRequest

    backend.rescore_margin, backend.first_token_margin = DEFAULT_RESCORE_MARGIN, 1e9
    backend.generate([GenerationRequest(messages=[{"role": "user", "content": user_turn(bench.question(r))}],
                                        max_new_tokens=2) for r in items[:2]])
    backend.first_token_margin = DEFAULT_FIRST_TOKEN_MARGIN
    # each configuration timed --repeats times, interleaved, so a slow moment of the machine hits all alike
    times: dict[str, list[float]] = {}
    answers: dict[str, list] = {}
    stats: dict[str, dict] = {}
    for _ in range(args.repeats):
        for key, fn in (("plain16", lambda: plain_loop(max_new)), ("plain2", lambda: plain_loop(2)),
                        ("pure", lambda: fairdistill(0.0)), ("auto", lambda: fairdistill(DEFAULT_RESCORE_MARGIN))):
            secs, preds, *st = fn()
            times.setdefault(key, []).append(secs)
            answers[key] = preds
            stats[key] = st[0] if st else {}
    best = {k: min(v) for k, v in times.items()}
    plain16 = answers["plain16"]
    rows = [("plain loop, bf16", max_new, best["plain16"], plain16, {}),
            ("plain loop, bf16", 2, best["plain2"], answers["plain2"], {}),
            ("fairdistill, pure bf16", max_new, best["pure"], answers["pure"], stats["pure"]),
            ("fairdistill, auto", max_new, best["auto"], answers["auto"], stats["auto"])]
    print("seconds per repeat: " + "; ".join(f"{k} {', '.join(f'{x:.1f}' for x in v)}" for k, v in times.items()))
    ref = None
    if args.float32:
        s, ref, st = fairdistill(0.0, float32=True)
        rows.append(("fairdistill, float32", max_new, s, ref, st))

    n = len(items)
    print(f"{args.model}: {n} ambiguous BBQ items, {sum(n_tokens) / n:.0f} prompt tokens on average; "
          f"{torch.get_num_threads()} threads; {platform.processor() or platform.machine()}; "
          f"native bf16: {native_bf16('cpu')}")
    base = rows[0][2]
    print(f"{'configuration':26s} {'new tok':>7s} {'seconds':>8s} {'items/s':>8s} {'vs plain':>8s} "
          f"{'same as plain':>13s} {'same as fp32':>12s}  backend stats")
    out = []
    for name, new, secs, preds, st in rows:
        same_plain = sum(a == b for a, b in zip(preds, plain16))
        same_ref = "" if ref is None else f"{sum(a == b for a, b in zip(preds, ref))}/{n}"
        print(f"{name:26s} {new:7d} {secs:8.1f} {n / secs:8.2f} {secs / base:7.2f}x {same_plain:>9d}/{n} "
              f"{same_ref:>12s}  {st or ''}")
        out.append({"configuration": name, "max_new_tokens": new, "seconds": round(secs, 2), "items_per_s": n / secs,
                    "vs_plain": secs / base, "same_as_plain": same_plain, "stats": st})
    pure_s = next(r[2] for r in rows if r[0] == "fairdistill, pure bf16")
    auto_s = next(r[2] for r in rows if r[0] == "fairdistill, auto")
    print(f"fairdistill pure bf16 / plain loop: {pure_s / base:.2f}x (target <= 1.3x); "
          f"auto / pure bf16: {auto_s / pure_s:.2f}x (target <= 1.5x)")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "items": n, "rows": out}, indent=2))


if __name__ == "__main__":
    main()
