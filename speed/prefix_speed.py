"""Generation with and without shared prompt prefixes (rotations of one BBQ question), A/B in one process.

    python speed/prefix_speed.py --model qwen2.5-coder-1.5b --limit 4 --threads 1

Prints seconds per call for: bf16 alone (no float32 first-token check), both ways, then the default
(with the check), both ways, and how many answers agree.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--limit", type=int, default=4, help="BBQ items per category (Age, Religion), ambiguous")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from fairdistill.backends.base import GenerationRequest, load_backend
    from fairdistill.benchmarks.bbq import BBQ, mc_question
    from fairdistill.methods.base import user_turn

    be = load_backend(args.model, dtype="auto")
    items = BBQ(categories="Age,Religion", limit=args.limit, condition="ambig").load_items()
    reqs = [GenerationRequest(messages=[{"role": "user", "content": user_turn(mc_question(it, o))}], max_new_tokens=16)
            for it in items for o in ([0, 1, 2], [1, 2, 0], [2, 0, 1])]
    margin = be.rescore_margin
    texts = {}
    for check in (False, True):
        be.rescore_margin = margin if check else 0.0
        for share in (False, True):
            be.share_prefixes = share
            n0 = be.n_first_fp32
            t = time.perf_counter()
            texts[check, share] = [o.text for o in be.generate(reqs)]
            print(f"float32 check {'on ' if check else 'off'} shared prefixes {'on ' if share else 'off'}: "
                  f"{time.perf_counter() - t:7.1f} s for {len(reqs)} rows ({be.n_first_fp32 - n0} first tokens in float32)",
                  flush=True)
        same = sum(a == b for a, b in zip(texts[check, False], texts[check, True]))
        print(f"  same answers with and without sharing: {same} of {len(reqs)}")


if __name__ == "__main__":
    main()
