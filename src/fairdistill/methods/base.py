"""Method interface: (backend, questions) -> final answers plus full transcripts.

A *question* is what a benchmark asks in generation mode: a user prompt (context, question and
lettered options) and the instruction that says how to answer (e.g. "Answer with a single
letter."). The benchmark parses the method's final text exactly as it parses the plain model's, so
``--method NAME`` reuses the benchmark's code unchanged.

Methods process a whole batch of questions round by round, so a batching backend generates each
round's turns together.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..backends.base import Backend, ChatMessage, GenerationRequest, GenerationResult


@dataclass
class Question:
    prompt: str
    answer_instruction: str = "Answer with a single letter."
    options: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodResult:
    text: str
    transcript: list[ChatMessage]
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {
            "final_text": self.text,
            "transcript": self.transcript,
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            **({"method_extra": self.extra} if self.extra else {}),
        }


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    temperature: float = 0.0
    seed: int | None = None


class MethodOptions(BaseModel):
    """A method's options, declared once: defaults, validation (one-line errors), `fairdistill list`.
    The run identity records the options as given (see :meth:`Method.identity`)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    language: Literal["native", "en"] = Field(
        "native", description="language of the method's instructions: native = the benchmark's "
        "(Question.meta['language']: English for BBQ, Chinese for cbbq, Korean for kobbq), en = English")


class Method:
    name: ClassVar[str] = "method"
    Options: ClassVar[type[MethodOptions]] = MethodOptions

    def __init__(self, backend: Backend, **options: Any):
        self.backend = backend
        self.options = options
        self.opts = self.validate_options(options)

    @classmethod
    def validate_options(cls, options: dict[str, Any]) -> "MethodOptions":
        """The validated options; an unknown or bad option is a one-line UserError. Runs before any model loads
        (``RunSpec.build_benchmark``) as well as here."""
        from ..options import parse_options

        # keys starting with "_" are internal hand-overs between components, not user options
        return parse_options(cls.Options, cls.name, {k: v for k, v in options.items()
                                                     if not k.startswith("_") and v is not None}, kind="method")

    def identity(self) -> dict[str, Any]:
        return {"method": self.name, **{k: v for k, v in self.options.items() if not k.startswith("_")}}

    def check(self) -> None:
        self.backend.require(chat=True, what=f"method {self.name!r}")

    # languages --------------------------------------------------------------------------------
    def question_language(self, q: Question) -> str:
        """The language of the instructions this method adds to ``q``: the question's own (its benchmark's)
        with option ``language=native``, English with ``language=en``."""
        if self.opts.language == "en":
            return "en"
        return str((q.meta or {}).get("language") or "en")

    @classmethod
    def language_error(cls, options: dict[str, Any], language: str) -> str | None:
        """Why this method cannot run with ``options`` on questions in ``language``; None if it can.
        The plain turn (no instructions of its own) runs in every language."""
        return None

    def use_language(self, language: str) -> None:
        """Told by a benchmark before it runs: refuse (one line) a language the method has no instructions in."""
        from ..errors import UserError

        err = self.language_error(self.options, language)
        if err:
            raise UserError(err)

    def answer(self, questions: Sequence[Question], gen: GenerationConfig | None = None) -> list[MethodResult]:
        raise NotImplementedError

    # helpers --------------------------------------------------------------------------------
    def _chat(
        self,
        conversations: Sequence[list[ChatMessage]],
        gen: GenerationConfig,
        backend: Backend | None = None,
        max_new_tokens: int | None = None,
    ) -> list[GenerationResult]:
        be = backend or self.backend
        reqs = [
            GenerationRequest(
                messages=list(conv),
                max_new_tokens=max_new_tokens or gen.max_new_tokens,
                temperature=gen.temperature,
                seed=gen.seed,
            )
            for conv in conversations
        ]
        return be.generate(reqs)


def user_turn(q: Question) -> str:
    return f"{q.prompt}\n{q.answer_instruction}".strip()


def get_method(name: str, backend: Backend, **options: Any) -> Method:
    from ..registry import METHODS

    m = METHODS.get(name)(backend, **options)
    m.check()
    return m
