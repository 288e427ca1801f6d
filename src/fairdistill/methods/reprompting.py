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

Under option permutation (``permute=cyclic``) a benchmark asks each item once per option order.
``explanation``'s first turn is reasoning, not an answer, so it is generated once per item (on the
first order it is asked in) and reused: each rotation's conversation holds that explanation and
asks only the final answer with its own option order (1 + n_rotations calls per item instead of
2 x n_rotations). ``reprompting``'s first turn is an answer to the rotated question, so every
rotation runs both turns.
"""
from __future__ import annotations

from typing import Sequence

from ..registry import METHODS
from .base import GenerationConfig, MethodResult, Question
from pydantic import Field

from .prompts import PromptedMethod, PromptedOptions, fill


class _TwoTurnMethod(PromptedMethod):
    """One conversation of two user turns; the first reply is kept in ``extra[first_key]``."""

    first_template = second_template = first_key = ""
    #: reuse the first turn across questions of one item (the same meta "id"): see the module docstring
    share_first_turn = False

    def first_tokens(self) -> int | None:
        return None  # the benchmark's max_new_tokens

    def answer(self, questions: Sequence[Question], gen: GenerationConfig | None = None) -> list[MethodResult]:
        gen = gen or GenerationConfig()
        # which question's first turn each question uses: its own, or its item's first
        lead: dict = {}
        src = []
        for k, q in enumerate(questions):
            item = (q.meta or {}).get("id")
            src.append(lead.setdefault(item, k) if self.share_first_turn and item is not None else k)
        asked = sorted(set(src))
        first_convs = {k: [{"role": "user", "content": fill(self.templates(questions[k])[self.first_template],
                                                             **self.base_values(questions[k]))}]
                       for k in asked}
        outs = dict(zip(asked, self._chat([first_convs[k] for k in asked], gen, max_new_tokens=self.first_tokens())))
        convs = [list(first_convs[j]) for j in src]
        first = [outs[j] for j in src]
        owner = [j == k for k, j in enumerate(src)]  # the question whose call produced the first turn
        for c, q, o in zip(convs, questions, first):
            c.append({"role": "assistant", "content": o.text})
            c.append({"role": "user", "content": fill(self.templates(q)[self.second_template], **self.base_values(q))})
        second = self._chat(convs, gen)
        out = []
        for c, o1, o2, own in zip(convs, first, second, owner):
            c.append({"role": "assistant", "content": o2.text})
            # a shared first turn is charged to the question that generated it, so costs add up per item
            out.append(MethodResult(
                text=o2.text, transcript=c, calls=2 if own else 1,
                prompt_tokens=(o1.prompt_tokens if own else 0) + o2.prompt_tokens,
                completion_tokens=(o1.completion_tokens if own else 0) + o2.completion_tokens,
                extra={self.first_key: o1.text, **({} if own else {"first_turn_shared": True})},
            ))
        return out


@METHODS.register("explanation")
class Explanation(_TwoTurnMethod):
    """Explain which answers rely on invalid assumptions, then answer (options: explain_tokens, prompts)."""

    name = "explanation"
    section = "explanation"

    class Options(PromptedOptions):
        explain_tokens: int = Field(128, ge=1, description="length cap of the generated explanation, in tokens")
    first_template, second_template, first_key = "explain", "answer", "explanation"
    share_first_turn = True

    def first_tokens(self) -> int | None:
        return self.opts.explain_tokens


@METHODS.register("reprompting")
class Reprompting(_TwoTurnMethod):
    """Answer, then 'remove bias from your answer' and answer again (option: prompts)."""

    name = "reprompting"
    section = "reprompting"
    first_template, second_template, first_key = "first", "reprompt", "first_answer"
