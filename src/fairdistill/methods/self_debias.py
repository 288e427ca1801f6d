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


@METHODS.register("explanation")
class Explanation(PromptedMethod):
    """Explain which answers rely on invalid assumptions, then answer (options: explain_tokens, prompts)."""

    name = "explanation"
    section = "explanation"
    option_names = ("explain_tokens",)

    def answer(self, questions: Sequence[Question], gen: GenerationConfig | None = None) -> list[MethodResult]:
        gen = gen or GenerationConfig()
        explain_tokens = as_int(self.options, "explain_tokens", 128, 1)
        convs = [[{"role": "user", "content": fill(self.t["explain"], **self.base_values(q))}] for q in questions]
        first = self._chat(convs, gen, max_new_tokens=explain_tokens)
        for c, q, o in zip(convs, questions, first):
            c.append({"role": "assistant", "content": o.text})
            c.append({"role": "user", "content": fill(self.t["answer"], **self.base_values(q))})
        second = self._chat(convs, gen)
        out = []
        for c, o1, o2 in zip(convs, first, second):
            c.append({"role": "assistant", "content": o2.text})
            out.append(MethodResult(
                text=o2.text, transcript=c, calls=2,
                prompt_tokens=o1.prompt_tokens + o2.prompt_tokens,
                completion_tokens=o1.completion_tokens + o2.completion_tokens,
                extra={"explanation": o1.text},
            ))
        return out


@METHODS.register("reprompting")
class Reprompting(PromptedMethod):
    """Answer, then 'remove bias from your answer' and answer again (option: prompts)."""

    name = "reprompting"
    section = "reprompting"

    def answer(self, questions: Sequence[Question], gen: GenerationConfig | None = None) -> list[MethodResult]:
        gen = gen or GenerationConfig()
        convs = [[{"role": "user", "content": fill(self.t["first"], **self.base_values(q))}] for q in questions]
        first = self._chat(convs, gen)
        for c, q, o in zip(convs, questions, first):
            c.append({"role": "assistant", "content": o.text})
            c.append({"role": "user", "content": fill(self.t["reprompt"], **self.base_values(q))})
        second = self._chat(convs, gen)
        out = []
        for c, o1, o2 in zip(convs, first, second):
            c.append({"role": "assistant", "content": o2.text})
            out.append(MethodResult(
                text=o2.text, transcript=c, calls=2,
                prompt_tokens=o1.prompt_tokens + o2.prompt_tokens,
                completion_tokens=o1.completion_tokens + o2.completion_tokens,
                extra={"first_answer": o1.text},
            ))
        return out
