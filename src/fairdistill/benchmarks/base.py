"""The benchmark interface: items -> requests -> per-item records -> metrics.

A benchmark loads its items (each a dict with a unique ``"id"``), evaluates them in batches
against a backend (optionally through an inference-time method) and aggregates the stored
per-item records into metrics. It never stores anything itself: the runner does that, so every
benchmark gets incremental writing and resume for free.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, model_validator

from ..backends.base import Backend
from ..errors import CapabilityError, UserError
from ..options import (  # noqa: F401  (the option helpers' old home: benchmarks, methods and plugins import them here)
    PathStr,
    comma_list,
    describe_options,
    ids_option,
    literal_choices,
    option_aliases,
    option_list,
    parse_options,
    type_name,
)


@dataclass
class EvalContext:
    backend: Backend
    method: Any = None  # a fairdistill.methods.Method, or None for the plain model
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportView:
    """A chart the report draws from a benchmark's tidy rows: the rows matching ``where`` (a tuple value
    matches any of its items), one bar group per value of ``x``, one bar per run, CI whiskers; one chart
    per value of ``facet``. ``delta`` adds a chart of each run minus the first."""

    title: str
    x: str
    where: dict = field(default_factory=dict)
    facet: str | None = None
    ylabel: str = "value (see definitions)"
    ylim: tuple[float, float] | None = None
    zero_line: bool = False
    delta: bool = False


@dataclass(frozen=True)
class ReportTable:
    """A side-by-side table of the rows matching ``where``, one line per combination of ``keys``."""

    title: str
    keys: tuple[str, ...]
    where: dict = field(default_factory=dict)
    value_label: str = "value [95% CI]"
    note: str = ""


@dataclass(frozen=True)
class ReportHeadline:
    """One column of the report's comparison of mitigations (one line per model or mitigation): the value
    [95% CI] of the row matching ``where``. ``note`` says how to read it (range, which way is better)."""

    label: str
    where: dict = field(default_factory=dict)
    note: str = ""


class BenchmarkOptions(BaseModel):
    """A benchmark's options: types, defaults, validation, ``fairdistill options`` help and run identity.

    ``model_dump()`` is the run identity, so a field that changes no result (where the data lies,
    a batch size) is declared with ``exclude=True``. None given for any option means its default.
    """

    model_config = ConfigDict(extra="forbid")
    #: fields recorded in the identity only when set to other than their default, so that the
    #: identities of runs made before the option existed still match
    identity_unless_default: ClassVar[frozenset[str]] = frozenset()

    data: PathStr | None = Field(None, exclude=True,
                                 description="dataset folder (default: $FAIRDISTILL_DATA or ../shared/data)")
    limit: PositiveInt | None = Field(None, description="items to evaluate, a seeded sample (default: all)")
    seed: int = Field(0, description="seed for sampling, subsets and bootstrap")
    ids: Annotated[list[str] | None, BeforeValidator(ids_option)] = Field(
        None, description="evaluate only these item ids (of the sample the other options select); "
                          "@FILE reads them from a file, one per line (# starts a comment)")

    @model_validator(mode="before")
    @classmethod
    def _none_is_default(cls, values: Any) -> Any:
        # the CLI and study files pass every option they know of, unset ones as None
        return {k: v for k, v in values.items() if v is not None} if isinstance(values, dict) else values


# Helpers over an options model are functions, not methods: any method name could clash with an option.
def options_identity(opts: BenchmarkOptions) -> dict[str, Any]:
    """The options' part of the run identity."""
    out = opts.model_dump()
    # options added after runs were made are recorded only when set, so older identities still match
    for name in opts.identity_unless_default | {"ids"}:
        if out.get(name) == type(opts).model_fields[name].default:
            del out[name]
    return out


class Benchmark:
    """Subclass, set ``name``, implement ``items``, ``evaluate`` and ``metrics``, and register.

    Options are declared once, as ``class Options(BenchmarkOptions)`` on the benchmark; the
    constructor validates its keyword arguments through it into ``self.opts``. An option can also
    be read as an attribute (``bench.limit``) unless the benchmark sets one of that name.
    """

    name: ClassVar[str] = "benchmark"
    description: ClassVar[str] = ""
    #: items handed to one ``evaluate`` call; the unit of incremental saving
    batch_size: ClassVar[int] = 16

    def batch_size_for(self, ctx: "EvalContext") -> int:
        """Items per ``evaluate`` call (and per save) for this context; default ``batch_size``."""
        return self.batch_size
    #: whether the benchmark can run through an inference-time method
    supports_methods: ClassVar[bool] = False
    #: how the report shows the tidy rows (title, the paragraph under it, charts, tables); without
    #: views the report draws one chart of every row and one table of all rows
    report_title: ClassVar[str] = ""
    report_intro: ClassVar[str] = ""
    report_views: ClassVar[tuple[ReportView, ...]] = ()
    report_tables: ClassVar[tuple[ReportTable, ...]] = ()
    #: the benchmark's columns in the report's comparison of mitigations
    report_headlines: ClassVar[tuple[ReportHeadline, ...]] = ()

    Options: ClassVar[type[BenchmarkOptions]] = BenchmarkOptions

    def __init__(self, **options: Any):
        self.opts = parse_options(self.Options, self.name, options)

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: options read as attributes by callers and plugins
        opts = self.__dict__.get("opts")
        if opts is not None and name in type(opts).model_fields:
            return getattr(opts, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def identity(self) -> dict[str, Any]:
        """Everything that changes the results; a resumed run must have the same identity."""
        return {"benchmark": self.name, **options_identity(self.opts)}

    def data_files(self) -> list[str]:
        """Files read, for hashing into the run config (reproducibility)."""
        return []

    def items(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def load_items(self) -> list[dict[str, Any]]:
        """``items()`` computed once; the CLI calls it before loading a model so bad data fails fast."""
        if getattr(self, "_items_memo", None) is None:
            items = self.items()
            if self.opts.ids is not None:
                known = {it["id"] for it in items}
                missing = [i for i in self.opts.ids if i not in known]
                if missing:
                    raise UserError(f"{self.name}: {len(missing)} of the requested ids are not among its items "
                                    f"(e.g. {missing[0]!r}); ids must come from the same options and data")
                want = set(self.opts.ids)
                items = [it for it in items if it["id"] in want]
            self._items_memo = items
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

    def check_method_options(self, method: str | None, options: dict[str, Any]) -> None:
        """Refuse, before any model loads, method options this benchmark cannot run with (default: none)."""

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

    # -- self-distillation (fairdistill.distill.self_distill) -------------------------------------
    def question(self, item: dict[str, Any], order: list[int] | None = None) -> Any:
        """The item as a lettered multiple-choice :class:`~fairdistill.methods.base.Question`, its options
        shown in ``order`` (``order[d]`` = the option at letter d); records' ``pred`` index options."""
        raise UserError(f"benchmark {self.name!r} does not pose its items as multiple-choice questions")

    def template_key(self, item: dict[str, Any]) -> Any:
        """Items sharing a key are paraphrases of one template (held out together); None: no templates."""
        return None

    def answer_role(self, item: dict[str, Any], option: int) -> str | None:
        """What choosing ``option`` means (e.g. "unknown", "biased", "anti-biased"); None if unknown."""
        return None

    #: one line under the terminal table saying how to read it (abbreviations, what a cell holds); "" for none
    summary_legend: ClassVar[str] = ""

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
        if "token_pll" not in be.capabilities():
            raise CapabilityError(f"{what} on a masked LM needs token-level PLL, which {be.name} cannot do")
    else:
        be.require(score=True, what=what)
