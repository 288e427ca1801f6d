"""float32 vs bfloat16 forward speed of a model on this machine: whether ``dtype: auto`` should pick bf16.

    python speed/dtype_speed.py                                  # Qwen2.5-Coder-1.5B, 4 x 64 tokens, 1 thread
    python speed/dtype_speed.py --model smollm2 --threads 2

Prints seconds per forward for each dtype (the mean of ``--repeats`` after one warm-up) and the ratio,
with the CPU flags that decide ``auto`` (AVX512-BF16 / AMX: native bf16).
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", help="built-in name or model folder")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from fairdistill.backends.builtin import BUILTIN_MODELS, resolve_builtin
    from fairdistill.backends.hf import native_bf16

    torch.set_num_threads(a.threads)
    path = resolve_builtin(a.model) if a.model in BUILTIN_MODELS else a.model
    print(f"model {a.model}, batch {a.batch} x {a.tokens} tokens, {a.threads} thread(s); "
          f"native bf16 on this CPU: {native_bf16('cpu')}")
    x = torch.randint(0, 1000, (a.batch, a.tokens))
    secs = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
        with torch.no_grad():
            model(x)
            t0 = time.perf_counter()
            for _ in range(a.repeats):
                model(x)
        secs[dtype] = (time.perf_counter() - t0) / a.repeats
        print(f"{str(dtype).replace('torch.', ''):>9}: {secs[dtype]:.2f} s per forward", flush=True)
        del model
    print(f"bfloat16 / float32 time: {secs[torch.bfloat16] / secs[torch.float32]:.2f}x")


if __name__ == "__main__":
    main()
