"""The plain model: one user turn, one answer."""
from __future__ import annotations

from typing import Sequence

from ..registry import METHODS
from .base import GenerationConfig, Method, MethodResult, Question, user_turn


@METHODS.register("baseline")
class Baseline(Method):
    """The plain model: the benchmark's question in one user turn, no debiasing (what --compare pairs methods with)."""

    name = "baseline"

    def answer(self, questions: Sequence[Question], gen: GenerationConfig | None = None) -> list[MethodResult]:
        gen = gen or GenerationConfig()
        convs = [[{"role": "user", "content": user_turn(q)}] for q in questions]
        outs = self._chat(convs, gen)
        return [
            MethodResult(
                text=o.text,
                transcript=c + [{"role": "assistant", "content": o.text}],
                calls=1,
                prompt_tokens=o.prompt_tokens,
                completion_tokens=o.completion_tokens,
            )
            for c, o in zip(convs, outs)
        ]
