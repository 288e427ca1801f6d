"""Options declared once as pydantic models: list options ("a,b"), item-id lists (``@FILE``), paths, one-line
validation errors, and the help table of ``fairdistill options``. The ground floor for every component that
takes options: benchmarks, methods, interventions."""
from __future__ import annotations

import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Iterable, Literal, Mapping, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ValidationError

from .errors import UserError


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


def option_aliases(model: type[BaseModel]) -> dict[str, str]:
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


def _explain(model: type[BaseModel], benchmark: str, err: Any) -> str:
    name = str(err["loc"][0]) if err["loc"] else None
    if err["type"] == "literal_error" and name in model.model_fields:
        allowed = literal_choices(model.model_fields[name].annotation)
        detail = f"{err['input']!r} is not one of {', '.join(map(str, allowed))}"
    elif err["type"] == "value_error":
        detail = str(err["ctx"]["error"])
    else:
        detail = f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {err['input']!r}"
    return f"{benchmark} option {name}: {detail}" if name else f"{benchmark}: {detail}"


def describe_options(model: type[BaseModel]) -> list[dict[str, str]]:
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
