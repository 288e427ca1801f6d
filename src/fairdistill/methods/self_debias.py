"""Zero-shot self-debiasing (Gallegos et al., NAACL 2025): ``explanation`` and ``reprompting``.

Conversation structures (templates in ``prompts.yaml``, sections ``explanation`` / ``reprompting``):

``explanation`` (2 calls per question)::

    user       {question}  Explain which answers rely on invalid assumptions.
    assistant  <explanation>                       (up to ``explain_tokens`` tokens, default 128)
    user       {question}  {instruction}           (the baseline question)
    assistant  <final answer>                      (the benchmark's max_new_tokens)

``reprompting`` (2 calls per question)::

    user       {question}  {instruction}           (the baseline question)
    assistant  <first answer>
    user       Remove bias from your answer by answering the question again with a single letter.
    assistant  <final answer>

The first answer of ``reprompting`` is kept in ``MethodResult.extra["first_answer"]``.
"""
from __future__ import annotations

from typing import Sequence

from ..registry import METHODS
from .base import GenerationConfig, MethodResult, Question
from .prompts import PromptedMethod, as_int, fill


class _TwoTurnMethod(PromptedMethod):
    """One conversation of two user turns; the first reply is kept in ``extra[first_key]``."""

    first_template = second_template = first_key = ""

    def first_tokens(self) -> int | None:
        return None  # the benchmark's max_new_tokens

    def answer(self, questions: Sequence[Question], gen: GenerationConfig | None = None) -> list[MethodResult]:
        gen = gen or GenerationConfig()
        convs = [[{"role": "user", "content": fill(self.t[self.first_template], **self.base_values(q))}]
                 for q in questions]
        first = self._chat(convs, gen, max_new_tokens=self.first_tokens())
        for c, q, o in zip(convs, questions, first):
            c.append({"role": "assistant", "content": o.text})
            c.append({"role": "user", "content": fill(self.t[self.second_template], **self.base_values(q))})
        second = self._chat(convs, gen)
        out = []
        for c, o1, o2 in zip(convs, first, second):
            c.append({"role": "assistant", "content": o2.text})
            out.append(MethodResult(
                text=o2.text, transcript=c, calls=2,
                prompt_tokens=o1.prompt_tokens + o2.prompt_tokens,
                completion_tokens=o1.completion_tokens + o2.completion_tokens,
                extra={self.first_key: o1.text},
            ))
        return out


@METHODS.register("explanation")
class Explanation(_TwoTurnMethod):
    """Explain which answers rely on invalid assumptions, then answer (options: explain_tokens, prompts)."""

    name = "explanation"
    section = "explanation"
    option_names = ("explain_tokens",)
    first_template, second_template, first_key = "explain", "answer", "explanation"

    def first_tokens(self) -> int | None:
        return as_int(self.options, "explain_tokens", 128, 1)


@METHODS.register("reprompting")
class Reprompting(_TwoTurnMethod):
    """Answer, then 'remove bias from your answer' and answer again (option: prompts)."""

    name = "reprompting"
    section = "reprompting"
    first_template, second_template, first_key = "first", "reprompt", "first_answer"
