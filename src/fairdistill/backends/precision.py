"""Float32 forward passes for a model held in bfloat16, without a second copy of the model.

bfloat16 runs ~2-4x faster than float32 on CPUs with native bf16 (AVX512-BF16, AMX) and on GPUs,
but its 8-bit mantissa flips the argmax of near-tied multiple-choice options (measured: SmolLM2,
BBQ 12-choice protocol, 17 of 200 items). The HF backend scores in bf16 and re-scores only the
items whose top-two margin is small in float32, with this context manager: while it is active,
every module swaps in its float32 weights just before its forward pass and swaps them out right
after, so at most one module's float32 weights are in memory at a time.

The float32 weights come from the checkpoint's safetensors files when the model was loaded from a
folder (the exact float32 values, e.g. a dequantised GGUF), else from the bf16 weights upcast.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator


class Float32Weights:
    def __init__(self, model, folder: str | Path | None = None):
        self.model = model
        self.files: dict[str, Path] = {}
        if folder is not None and Path(folder).is_dir():
            from safetensors import safe_open

            for f in sorted(Path(folder).glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():
                        self.files[k] = f
        # every name a parameter goes by (tied weights have several), so a tied head finds its tensor
        self.names: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self.names.setdefault(id(p), []).append(name)

    def full(self, p):
        """Parameter ``p`` in float32: the checkpoint's own values where it has them, else upcast."""
        import torch
        from safetensors import safe_open

        for name in self.names.get(id(p), []):
            f = self.files.get(name)
            if f is not None:
                # opened per tensor: a file kept open would stay mapped, and every page read
                # would count in the process's memory until the pass ends
                with safe_open(str(f), framework="pt") as h:
                    return h.get_tensor(name).to(device=p.device, dtype=torch.float32)
        return p.data.float()

    def upcast(self) -> None:
        """Turn the whole model into float32 in place (a second, float32 copy of every weight; for work that
        needs float32 throughout rather than near-tie re-scoring). ``model.to(dtype)`` turns it back."""
        import torch

        for p in self.model.parameters():  # one weight at a time: never the whole model twice in float32
            if p.dtype != torch.float32:
                p.data = self.full(p)
        for b in self.model.buffers():
            if b.is_floating_point() and b.dtype != torch.float32:
                b.data = b.data.float()

    @contextmanager
    def active(self) -> Iterator[None]:
        import torch

        with ExitStack() as stack:
            full = self.full

            def pre(module, _args):
                module._fd_saved = []
                for p in module.parameters(recurse=False):
                    if p.dtype != torch.float32:
                        module._fd_saved.append((p, p.data))
                        p.data = full(p)

            def post(module, _args, _out):
                for p, data in getattr(module, "_fd_saved", []):
                    p.data = data
                module._fd_saved = []

            for m in self.model.modules():
                if any(True for _ in m.parameters(recurse=False)):
                    stack.callback(m.register_forward_hook(post).remove)
                    stack.callback(m.register_forward_pre_hook(pre).remove)
            yield
