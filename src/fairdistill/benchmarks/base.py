"""The benchmark interface: items -> requests -> per-item records -> metrics.

A benchmark loads its items (each a dict with a unique ``"id"``), evaluates them in batches
against a backend (optionally through an inference-time method) and aggregates the stored
per-item records into metrics. It never stores anything itself: the runner does that, so every
benchmark gets incremental writing and resume for free.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..backends.base import Backend
from ..errors import CapabilityError, UserError


@dataclass
class EvalContext:
    backend: Backend
    method: Any = None  # a fairdistill.methods.Method, or None for the plain model
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


class Benchmark:
    """Subclass, set ``name``, implement ``items``, ``evaluate`` and ``metrics``, and register."""

    name: ClassVar[str] = "benchmark"
    description: ClassVar[str] = ""
    #: items handed to one ``evaluate`` call; the unit of incremental saving
    batch_size: ClassVar[int] = 16
    #: whether the benchmark can run through an inference-time method
    supports_methods: ClassVar[bool] = False

    def __init__(self, data: str | None = None, limit: int | None = None, seed: int = 0, **options: Any):
        self.data = data
        self.limit = limit
        self.seed = seed
        self.options = options

    def identity(self) -> dict[str, Any]:
        """Everything that changes the results; a resumed run must have the same identity."""
        return {"benchmark": self.name, "limit": self.limit, "seed": self.seed, **self.options}

    def data_files(self) -> list[str]:
        """Files read, for hashing into the run config (reproducibility)."""
        return []

    def items(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def load_items(self) -> list[dict[str, Any]]:
        """``items()`` computed once; the CLI calls it before loading a model so bad data fails fast."""
        if getattr(self, "_items_memo", None) is None:
            self._items_memo = self.items()
        return self._items_memo

    def check(self, ctx: EvalContext) -> None:
        """Raise CapabilityError early if the backend cannot serve this benchmark."""

    @classmethod
    def check_method(cls, method: str | None) -> None:
        """The one place a benchmark refuses an inference-time method it cannot run through."""
        if method and method != "none" and not cls.supports_methods:
            from ..registry import BENCHMARKS

            takers = ", ".join(n for n, c in BENCHMARKS.items() if c.supports_methods)
            raise UserError(f"benchmark {cls.name!r} cannot run through inference-time method {method!r}: "
                            f"it scores likelihoods, not answers (methods apply to: {takers})")

    def evaluate(self, items: list[dict[str, Any]], ctx: EvalContext) -> list[dict[str, Any]]:
        raise NotImplementedError

    def metrics(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    # -- paired comparison (fairdistill.compare) -------------------------------------------------
    #: (statistic, per-unit array) of a correctness rate: McNemar's test and the transition table
    paired_binary: ClassVar[tuple[str, str] | None] = None
    #: the record field that names a paired unit (records of one unit share it)
    paired_key: ClassVar[str] = "id"

    @classmethod
    def paired_units(cls, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-unit outcomes ``{"id", "cell", <arrays' fields>}`` for comparing two runs item by item."""
        raise UserError(f"benchmark {cls.name!r} has no paired comparison (--compare)")

    @classmethod
    def paired_statistics(cls, cell: str) -> dict[str, Any]:
        """Statistic name -> function of the units' arrays, reducing the last axis."""
        raise UserError(f"benchmark {cls.name!r} has no paired comparison (--compare)")

    @classmethod
    def paired_definitions(cls) -> dict[str, str]:
        return {}

    def summary_table(self, metrics: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows for the terminal table; default: the tidy ``rows`` of the metrics."""
        return metrics.get("rows", [])


def seeded_subset(rows: list[Any], limit: int | None, key: str) -> list[Any]:
    """``limit`` rows drawn by a fixed seed string, kept in file order; all rows if fewer."""
    if limit is None or limit >= len(rows):
        return rows
    keep = sorted(random.Random(key).sample(range(len(rows)), limit))
    return [rows[k] for k in keep]


def require_sentence_scores(ctx: EvalContext, what: str) -> None:
    """Sentence-scoring benchmarks: token-level PLL on a masked LM, sequence log-likelihood otherwise."""
    be = ctx.backend
    if be.model_type == "masked":
        if not hasattr(be, "pll_positions") or getattr(be, "tokenizer", None) is None:
            raise CapabilityError(f"{what} on a masked LM needs token-level PLL, which {be.name} cannot do")
    else:
        be.require(score=True, what=what)


def option_list(value: Any) -> list[str] | None:
    """A list option given as "a,b" on the command line or as a list in a config; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    return [str(x).strip() for x in value]
