"""Data parallelism over processes started by ``torchrun`` or ``accelerate launch``.

Those launchers start one process per device and set ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``
(plus ``MASTER_ADDR``/``MASTER_PORT``). This module reads them and offers the few collectives the
runner and the trainers need: a barrier and gathering a small Python object. They run over a gloo
process group (CPU sockets: no GPU traffic, beside the NCCL group of a GPU run), set up on first
use through accelerate, as a Trainer does. Without those variables, or with ``WORLD_SIZE=1``, every function here is a
no-op and nothing touches ``torch.distributed``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence, TypeVar

from .errors import UserError

T = TypeVar("T")

#: how long a rank waits for the others at a barrier: shards of a long run can finish far apart
#: (generation lengths differ), so the default is generous (``FAIRDISTILL_DIST_TIMEOUT``, seconds)
DEFAULT_TIMEOUT_S = 24 * 3600


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistEnv:
    """This process's place among the launched ones (rank 0 of 1 when not launched)."""
    vals = {}
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        raw = os.environ.get(key, "").strip()
        try:
            vals[key] = int(raw) if raw else default
        except ValueError:
            raise UserError(f"environment variable {key}={raw!r} is not an integer") from None
    env = DistEnv(rank=vals["RANK"], world_size=max(1, vals["WORLD_SIZE"]), local_rank=vals["LOCAL_RANK"])
    if not 0 <= env.rank < env.world_size:
        raise UserError(f"RANK={env.rank} is outside WORLD_SIZE={env.world_size}")
    return env


_GROUP: Any = "unset"


def _group():
    """The gloo group our collectives use (the default group when that is gloo already)."""
    global _GROUP
    import torch.distributed as td

    if not td.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    timeout = timedelta(seconds=float(os.environ.get("FAIRDISTILL_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    if not td.is_initialized():
        if not os.environ.get("MASTER_ADDR"):
            raise UserError("WORLD_SIZE > 1 but MASTER_ADDR is not set: start the processes with "
                            "torchrun or accelerate launch")
        # as a Trainer would (NCCL on GPUs, gloo on CPUs; this rank's GPU made current), so a
        # Trainer started later in the process finds the group it expects
        from accelerate import PartialState

        PartialState(timeout=timeout)
    if _GROUP == "unset":
        _GROUP = None if td.get_backend() == "gloo" else td.new_group(backend="gloo", timeout=timeout)
    return _GROUP


def barrier() -> None:
    """Wait until every rank gets here."""
    if dist_env().active:
        import torch.distributed as td

        td.barrier(group=_group())


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
    env = dist_env()
    if not env.active:
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * env.world_size
    td.all_gather_object(out, obj, group=_group())
    return out


def shard_batches(items: Sequence[T], batch_size: int, env: DistEnv | None = None) -> list[list[T]]:
    """This rank's batches: ``items`` cut into batches of ``batch_size`` in order, batch k going to
    rank k mod world size. Whole batches (not single items) are dealt so that every batch holds
    exactly the items it would hold in one process: padding and batched arithmetic, and so every
    score, are the same as a single-process run's."""
    env = env or dist_env()
    bs = max(1, int(batch_size))
    batches = [list(items[i : i + bs]) for i in range(0, len(items), bs)]
    return batches[env.rank :: env.world_size]


def map_sharded(fn: Callable[[list[T]], list[Any]], items: Sequence[T], batch_size: int = 16) -> list[Any]:
    """``fn`` over ``items`` with the batches split over the ranks; every rank gets all results, in order."""
    env = dist_env()
    if not env.active:
        return list(fn(list(items)))
    mine = [fn(b) for b in shard_batches(items, batch_size, env)]
    parts = all_gather(mine)
    bs = max(1, int(batch_size))
    n_batches = (len(items) + bs - 1) // bs
    out: list[Any] = []
    for k in range(n_batches):  # batch k is the (k // world)-th batch of rank k % world
        out.extend(parts[k % env.world_size][k // env.world_size])
    return out


def local_device(device: str = "auto") -> str:
    """``auto`` -> this process's GPU (``cuda:LOCAL_RANK`` when launched with several processes,
    ``cuda`` otherwise) when CUDA is available, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    env = dist_env()
    if env.active:
        return f"cuda:{env.local_rank % max(1, torch.cuda.device_count())}"
    return "cuda"


def sum_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-rank counters added up (numbers summed; anything else taken from the first rank that has it)."""
    out: dict[str, Any] = {}
    for p in parts:
        for k, v in (p or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(out.get(k, 0), (int, float)):
                out[k] = out.get(k, 0) + v
            else:
                out.setdefault(k, v)
    return out
