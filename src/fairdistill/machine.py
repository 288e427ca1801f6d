"""What this machine is, for the records of every run: library versions, the CPU's bf16 matrix units, the GPU.

The ground floor: backends read it to pick a dtype (``native_bf16``), the runner records it in every run
(``environment``, ``versions``), the response cache keys answers by it. ``/proc/cpuinfo`` is read here only.
"""
from __future__ import annotations

import platform
from functools import lru_cache
from typing import Any

from ._version import __version__


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16() -> str | None:
    """The CPU's bf16 matrix unit: "amx", "avx512_bf16" or None (AMX and AVX512-BF16 kernels round differently,
    so a near-tie can go either way between machines)."""
    flags = cpu_flags()
    return "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else None


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA with bf16; x86 CPUs with AVX512-BF16 or AMX)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device == "cpu" and cpu_bf16() is not None


def versions() -> dict[str, str]:
    out = {"fairdistill": __version__, "python": platform.python_version()}
    for mod in ("torch", "transformers", "peft", "numpy", "scipy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    return out


def environment() -> dict[str, Any]:
    """What decides a model's numerics on this machine: library versions and the CPU's bf16 matrix units."""
    env: dict[str, Any] = {k: v for k, v in versions().items() if k in ("torch", "transformers")}
    env["cpu_bf16"] = cpu_bf16()
    try:
        import torch

        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        pass
    return env


__all__ = ["cpu_flags", "cpu_bf16", "native_bf16", "versions", "environment"]
