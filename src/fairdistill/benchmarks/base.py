"""The benchmark interface: items -> requests -> per-item records -> metrics.

A benchmark loads its items (each a dict with a unique ``"id"``), evaluates them in batches
against a backend (optionally through an inference-time method) and aggregates the stored
per-item records into metrics. It never stores anything itself: the runner does that, so every
benchmark gets incremental writing and resume for free.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from types import UnionType
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Iterable, Literal, Mapping, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from ..backends.base import Backend
from ..errors import CapabilityError, UserError


@dataclass
class EvalContext:
    backend: Backend
    method: Any = None  # a fairdistill.methods.Method, or None for the plain model
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


def option_list(value: Any) -> list[str] | None:
    """A list option given as "a,b" on the command line or as a list in a config; None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [x.strip() for x in value.split(",") if x.strip()]
    return [str(x).strip() for x in value]


def ids_option(value: Any) -> list[str] | None:
    """Item ids as a list, "a,b", or "@FILE" (one id per line; blank lines and # comments skipped). The ids
    themselves are the run identity, wherever the file lies."""
    if isinstance(value, str) and value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ValueError(f"cannot read the ids file {path}: {e.strerror or e}") from None
        ids = [x.split("#", 1)[0].strip() for x in lines]
        ids = [x for x in ids if x]
        if not ids:
            raise ValueError(f"the ids file {path} lists no ids")
        return ids
    listed = option_list(value)
    if listed is not None and any(x.startswith("@") for x in listed):  # several files (and ids), in order
        return [i for x in listed for i in (ids_option(x) if x.startswith("@") else [x])]
    return listed


_KEEP: Any = object()


def comma_list(choices: Iterable[str] | None = None, what: str = "value",
               aliases: Mapping[str, str] | None = None, *, empty: Any = _KEEP) -> Any:
    """The type of a list option given as "a,b" or a list; entries (after ``aliases``) must be ``choices``.

    ``empty``: what an empty list stands for (e.g. the default); by default it stays an empty list."""
    known = list(choices) if choices is not None else None
    aliases = dict(aliases or {})

    def parse(value: Any) -> list[str] | None:
        items = option_list(value)
        if items == [] and empty is not _KEEP:
            return list(empty) if isinstance(empty, (list, tuple)) else empty
        if items is None or known is None:
            return items
        items = [aliases.get(x, x) for x in items]
        for x in items:
            if x not in known:
                also = "".join(f" ({a} = {b})" for a, b in aliases.items())
                raise ValueError(f"unknown {what} {x!r}; known: {', '.join(known)}{also}")
        return items

    return Annotated[list[str] | None, BeforeValidator(parse)]


#: a path option, kept as the string a run config records
PathStr = Annotated[str, BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v)]


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


def option_aliases(model: type[BenchmarkOptions]) -> dict[str, str]:
    """Other name -> option, e.g. CrowS-Pairs takes ``categories`` for ``bias_types``."""
    return {a: name for name, f in model.model_fields.items()
            for a in getattr(f.validation_alias, "choices", []) if a != name}


def parse_options(model: type[BaseModel], benchmark: str, options: dict[str, Any], kind: str = "benchmark") -> Any:
    """Validated options (of a benchmark, or of a method with ``kind="method"``); anything wrong is one
    UserError line naming the option and what it accepts."""
    try:
        return model(**options)
    except ValidationError as e:
        errors = e.errors(include_url=False)
    unknown = [str(err["loc"][0]) for err in errors if err["type"] == "extra_forbidden"]
    aliases = option_aliases(model)
    twice = [f"{a} and {aliases[a]}" for a in unknown if a in aliases]
    if twice:  # pydantic reports an alias given beside its option as an unknown option
        raise UserError(f"{kind} {benchmark!r}: {', '.join(twice)} name the same option; give one")
    if unknown:
        raise UserError(f"{kind} {benchmark!r} has no option {', '.join(map(repr, unknown))}; "
                        f"options: {', '.join([*model.model_fields, *aliases])}")
    raise UserError(" | ".join(_explain(model, benchmark, err) for err in errors))


def _explain(model: type[BenchmarkOptions], benchmark: str, err: Any) -> str:
    name = str(err["loc"][0]) if err["loc"] else None
    if err["type"] == "literal_error" and name in model.model_fields:
        allowed = literal_choices(model.model_fields[name].annotation)
        detail = f"{err['input']!r} is not one of {', '.join(map(str, allowed))}"
    elif err["type"] == "value_error":
        detail = str(err["ctx"]["error"])
    else:
        detail = f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {err['input']!r}"
    return f"{benchmark} option {name}: {detail}" if name else f"{benchmark}: {detail}"


def describe_options(model: type[BenchmarkOptions]) -> list[dict[str, str]]:
    """One row per option: name (and other names), type, default, description (``fairdistill options``)."""
    others: dict[str, list[str]] = {}
    for alias, name in option_aliases(model).items():
        others.setdefault(name, []).append(alias)
    rows = []
    for name, f in model.model_fields.items():
        default = f.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(map(str, default))
        elif isinstance(default, bool):
            default = str(default).lower()  # as typed on the command line
        rows.append({"option": " or ".join([name, *others.get(name, [])]), "type": type_name(f.annotation),
                     "default": "" if default is None else str(default), "description": f.description or ""})
    return rows


def literal_choices(annotation: Any) -> tuple[Any, ...]:
    """The values a ``Literal`` (possibly inside an Optional or a list) allows."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return tuple(v for a in get_args(annotation) for v in literal_choices(a))


def type_name(annotation: Any) -> str:
    """A short, readable type for help tables: ``auto | loglik | generate``, ``int``, ``list``."""
    choices = literal_choices(annotation)
    if choices:
        return " | ".join(map(str, choices))
    origin = get_origin(annotation)
    if origin is Annotated:
        return type_name(get_args(annotation)[0])
    if origin is list:
        return "list (a,b)"
    if origin in (Union, UnionType):
        return " | ".join(type_name(a) for a in get_args(annotation) if a is not type(None))
    return getattr(annotation, "__name__", str(annotation))


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
