"""Requests per second of the OpenAI-compatible backend against a local server, at concurrency 1, 4, 16.

    python speed/http_throughput.py                      # starts `transformers serve` on SmolLM2
    python speed/http_throughput.py --url http://127.0.0.1:8000/v1 --model NAME   # your server
    python speed/http_throughput.py --requests 32 --max-tokens 8 --concurrency 1,4,16
    python speed/http_throughput.py --continuous-batching   # server batches concurrent requests

Each request is a short greedy chat completion (distinct prompts, fixed ``max_tokens``). The table
gives wall time, requests/s and generated tokens/s per concurrency level; higher is better. The
number says what the *server* sustains: a server without request batching (``transformers serve``
without ``--continuous-batching``) gains little from concurrency, vLLM gains a lot.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="API base of a running server (default: start transformers serve)")
    ap.add_argument("--model", help="model name on that server")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--threads", type=int, default=None, help="OMP threads of the started server")
    ap.add_argument("--continuous-batching", action="store_true",
                    help="start transformers serve with --continuous-batching (batches concurrent requests)")
    args = ap.parse_args()

    from fairdistill.backends.base import GenerationRequest, load_backend

    server = None
    if args.url:
        if not args.model:
            ap.error("--model is required with --url")
        url, model = args.url, args.model
    else:
        from fairdistill.backends.builtin import resolve_builtin
        from servers.transformers_serve import TransformersServe, missing_reason

        reason = missing_reason()
        if reason:
            sys.exit(f"cannot start transformers serve: {reason}")
        extra = ["--continuous-batching"] if args.continuous_batching else []
        server = TransformersServe(resolve_builtin("smollm2"), threads=args.threads, extra_args=extra).start()
        url, model = server.url, server.model_dir
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
        warm = load_backend(f"openai:{url}#{model}")
        warm.generate([GenerationRequest(messages=[{"role": "user", "content": "Hello"}], max_new_tokens=2)])
        rows = []
        for c in levels:
            backend = load_backend(f"openai:{url}#{model}", concurrency=c)
            reqs = [GenerationRequest(messages=[{"role": "user", "content": f"Write a word that rhymes with {k}."}],
                                      max_new_tokens=args.max_tokens) for k in range(args.requests)]
            t0 = time.perf_counter()
            res = backend.generate(reqs)
            dt = time.perf_counter() - t0
            toks = sum(r.completion_tokens for r in res)
            rows.append((c, len(res), dt, len(res) / dt, toks / dt, backend.stats()["retries"]))
        print(f"server: {url}  model: {model}  max_tokens: {args.max_tokens}")
        print(f"{'concurrency':>11} {'requests':>8} {'seconds':>8} {'req/s':>7} {'gen tok/s':>9} {'retries':>7}")
        for c, n, dt, rps, tps, retries in rows:
            print(f"{c:>11} {n:>8} {dt:>8.2f} {rps:>7.2f} {tps:>9.1f} {retries:>7}")
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
