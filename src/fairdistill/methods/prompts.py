"""Prompt templates of the inference-time methods, loaded from ``prompts.yaml`` (package data).

``load_prompts(path)`` returns the default templates with a user file's entries merged over them
(only the keys the file gives change). Unknown keys and unknown ``{placeholders}`` are refused with
one line, so a typo in an override file cannot silently send the wrong prompt.

Shared helpers for methods also live here: :class:`PromptedMethod` (the ``prompts=PATH`` option,
JSON-safe identity), :func:`fill` (template formatting with one-line errors), :func:`parse_option`
(a benchmark-independent letter/option parser used by adjudication to count votes) and
:func:`backend_list` (model strings or Backend objects -> chat-capable backends).
"""
from __future__ import annotations

import copy
import re
import string
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Sequence

from pydantic import Field

from ..backends.base import Backend
from ..errors import UserError
from .base import Method, MethodOptions, Question

DEFAULT_FILE = Path(__file__).with_name("prompts.yaml")
PLACEHOLDERS = {"question", "instruction", "answer", "feedback", "attribute", "prefix", "aspects", "format"}


@lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(DEFAULT_FILE.read_text(encoding="utf-8"))


def _merge(base: dict, over: dict, where: str, open_keys: tuple[str, ...]) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        k = str(k)
        here = f"{where}.{k}" if where else k
        if k not in base and where.split(".")[-1] not in open_keys:
            known = ", ".join(sorted(map(str, base))) or "none"
            raise UserError(f"prompts file: unknown key {here!r}; known here: {known}")
        if isinstance(v, dict):
            if not isinstance(base.get(k, {}), dict):
                raise UserError(f"prompts file: {here!r} must be a text, not a mapping")
            out[k] = _merge(base.get(k, {}), v, here, open_keys)
        else:
            if k in base and isinstance(base[k], dict):
                raise UserError(f"prompts file: {here!r} must be a mapping")
            out[k] = str(v)
    return out


def _check_fields(tree: Any, where: str = "") -> None:
    if isinstance(tree, dict):
        for k, v in tree.items():
            _check_fields(v, f"{where}.{k}" if where else str(k))
        return
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(str(tree)) if f is not None}
    except ValueError as e:
        raise UserError(f"prompts: template {where!r} is malformed ({e}); write literal braces as {{{{ }}}}") from None
    bad = {f for f in fields if f.split(".")[0].split("[")[0] not in PLACEHOLDERS}
    if bad:
        raise UserError(
            f"prompts: template {where!r} uses unknown placeholder(s) {', '.join(sorted(bad))}; "
            f"known: {', '.join(sorted(PLACEHOLDERS))}"
        )


@lru_cache(maxsize=None)
def _translation(language: str) -> dict[str, Any]:
    """``prompts.<language>.yaml`` (package data): translated sections, ``language`` (its name) and
    ``attributes`` (English attribute names -> this language's); {} when there is none."""
    import yaml

    p = DEFAULT_FILE.with_name(f"prompts.{language}.yaml")
    return (yaml.safe_load(p.read_text(encoding="utf-8")) or {}) if p.is_file() else {}


def language_name(language: str) -> str:
    return "English" if language == "en" else str(_translation(language).get("language") or language)


def translated_attribute(language: str, attribute: str) -> str:
    """A social attribute named in English ("gender") in ``language``, as the translation file gives it."""
    return str((_translation(language).get("attributes") or {}).get(attribute, attribute))


def load_prompts(path: str | Path | None = None, language: str = "en") -> dict[str, Any]:
    """Default templates, with the YAML file ``path`` (if given) merged over them.

    ``language`` other than "en": the sections translated in ``prompts.<language>.yaml`` (each with every
    key of its English section); ``path`` then is not used (it overrides the English templates)."""
    if language != "en":
        english = _defaults()
        out = {sec: _merge(english[sec], v, sec, open_keys=("levels", "aspects"))
               for sec, v in _translation(language).items() if sec not in ("language", "attributes")}
        _check_fields(out)
        return out
    prompts = copy.deepcopy(_defaults())
    if path:
        from ..data import read_yaml_mapping

        over = read_yaml_mapping(path, "prompts file")
        # prefix levels and intent-aware aspects may be added, not only replaced
        prompts = _merge(prompts, over, "", open_keys=("levels", "aspects"))
    _check_fields(prompts)
    return prompts


def fill(template: str, **values: Any) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError) as e:
        raise UserError(f"prompt template needs a value for {e} that this method does not provide") from None


class PromptedOptions(MethodOptions):
    prompts: str | None = Field(None, description="YAML file overriding prompt templates (prompts.yaml's shape)")


class PromptedMethod(Method):
    """A method whose texts come from the prompt templates (option ``prompts=PATH``), in English or, on a
    benchmark in another language (option ``language=native``), from ``prompts.<language>.yaml``."""

    section: str = ""
    Options = PromptedOptions
    #: whether the method's instructions may come from a translation file; False: English only
    translatable: ClassVar[bool] = True

    def __init__(self, backend: Backend, **options: Any):
        super().__init__(backend, **options)
        self.prompts = load_prompts(options.get("prompts"))
        self.t = self.prompts[self.section] if self.section else {}
        self._run_language = "en"  # the benchmark's, once it calls use_language (the identity records it)
        self._translated: dict[str, dict] = {}

    @classmethod
    def language_error(cls, options: dict[str, Any], language: str) -> str | None:
        if language == "en" or options.get("language") == "en" or not cls.section:
            return None
        name = language_name(language)
        if options.get("prompts"):
            return (f"method {cls.name!r}: prompts={options['prompts']} replaces the English templates; on {name} "
                    f"questions add --method-option language=en to send them")
        if not cls.translatable or cls.section not in load_prompts(language=language):
            return (f"method {cls.name!r} has no {name} instructions; run it with --method-option language=en "
                    f"(English instructions on {name} questions)")
        return None

    def use_language(self, language: str) -> None:
        super().use_language(language)
        self._run_language = "en" if self.opts.language == "en" else language

    def templates(self, q: Question | None = None) -> dict[str, Any]:
        """The section's templates in the language of question ``q`` (default: the run's language)."""
        lang = self._run_language if q is None else self.question_language(q)
        if lang == "en":
            return self.t
        if lang not in self._translated:
            err = self.language_error(self.options, lang)
            if err:
                raise UserError(err)
            self._translated[lang] = load_prompts(language=lang)[self.section]
        return self._translated[lang]

    def check_languages(self, questions: Sequence[Question]) -> None:
        """Refuse (one line) questions in a language this method has no instructions in."""
        for q in questions:
            self.templates(q)

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {"method": self.name}
        for k, v in self.options.items():
            if k.startswith("_"):
                continue
            ident[k] = _jsonable(v)
        if self.section:
            ident["prompts"] = self.templates()  # the exact texts used, so a changed template is a different run
        if self._run_language != "en":
            ident["instructions_language"] = self._run_language
        return ident

    @staticmethod
    def base_values(q: Question) -> dict[str, str]:
        return {"question": q.prompt, "instruction": q.answer_instruction}


def _jsonable(v: Any) -> Any:
    if isinstance(v, Backend):
        return v.describe()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def backend_list(spec: Any, what: str, cache_of: Backend | None = None) -> list[Backend]:
    """Backends from Backend objects and/or model strings (a list, or one comma-separated string).
    A model loaded here from a string shares ``cache_of``'s response cache when that backend has one,
    so a resumed run (or a fresh machine with the cache) does not query the extra models again."""
    from ..backends.base import load_backend
    from ..backends.cache import CachingBackend

    if spec is None or spec == "":
        return []
    if isinstance(spec, Backend):
        spec = [spec]
    items = spec if isinstance(spec, (list, tuple)) else [s.strip() for s in str(spec).split(",") if s.strip()]
    out = []
    for it in items:
        if isinstance(it, Backend):
            out.append(it)
        elif isinstance(it, str):
            be = load_backend(it)
            # keys hold each model's identity, so the members can share one file
            out.append(CachingBackend(be, cache_of.path) if isinstance(cache_of, CachingBackend) else be)
        else:
            raise UserError(f"{what}: expected a model string or a backend, got {type(it).__name__}")
    return out


def letters_for(q: Question) -> str:
    return string.ascii_uppercase[: max(len(q.options), 1)]


def parse_option(text: str, q: Question) -> int | None:
    """The option a free-text answer names: a letter ("B", "(b)", "Answer: B", "B. ...") or an
    option's exact text; None if it names none (or several). Benchmark-independent (used to count
    adjudication votes; benchmarks still parse the final text with their own parser)."""
    if not text:
        return None
    letters = letters_for(q) if q.options else "ABC"
    t = text.replace("**", "").strip()
    L = letters + letters.lower()
    pats = [  # the whole reply is a letter; "Answer: B" / "the answer is (B)"; a leading "B." / "(B)"; "option B"
        rf"^\s*[\(\[]?([{L}])[\)\]]?[.:)]?\s*$",
        rf"(?i:answer)\s*(?:is|would be|:)?\s*:?\s*(?:(?i:option)\s+)?[\(\[]?([{letters}])\b",
        rf"^\s*[\(\[]?([{letters}])[\)\].:](?:\s|$)",
        rf"\b(?i:option)\s+[\(\[]?([{letters}])\b",
    ]
    for p in pats:
        m = re.search(p, t)
        if m:
            return letters.index(m.group(1).upper())
    low = t.lower().rstrip(".")
    opts = [o.strip().lower().rstrip(".") for o in q.options]
    if low in opts:
        return opts.index(low)
    hits = [i for i, o in enumerate(opts) if o and re.search(r"(?<!\w)" + re.escape(o) + r"(?!\w)", low)]
    return hits[0] if len(hits) == 1 else None


def total_usage(outs: Sequence) -> tuple[int, int]:
    return sum(o.prompt_tokens for o in outs), sum(o.completion_tokens for o in outs)
