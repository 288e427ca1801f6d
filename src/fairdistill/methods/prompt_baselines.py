"""Instruction-prefix baselines (Chen et al. 2024): ``prefix-1`` ... ``prefix-6``.

One call per question: an instruction is put before the baseline question::

    user       {prefix}\\n\\n{question}\\n{instruction}
    assistant  <answer>

The six levels go from the most abstract to the most specific (wording ours, in ``prompts.yaml``,
section ``prefix``):

=========  ==========================================================================
prefix-1   imagine a world without {attribute} bias
prefix-2   do not rely on {attribute} stereotypes
prefix-3   assume every {attribute} is equally represented in every occupation and role
prefix-4   remember that many people have jobs/roles not associated with their {attribute}
prefix-5   longer: avoid stereotypes, assume nothing, use all pronouns (incl. "they") equally
prefix-6   assume equal representation; answer as if any {attribute} were equally likely
=========  ==========================================================================

Option ``attribute`` (default ``"gender"``, Chen et al.'s setting) names the social attribute,
e.g. ``attribute="age or religion"``; ``attribute=auto`` takes it from each question
(``Question.meta["attribute"]``, which BBQ sets from the item's category: "age", "religion", ...),
falling back to "gender" where a benchmark names none. On Chinese or Korean questions (cbbq, kobbq,
``language=native``) the instruction comes from ``prompts.zh.yaml`` / ``prompts.ko.yaml`` and the
attribute is the question's ``meta["attribute_native"]`` (auto) or the translation file's word for it.
"""
from __future__ import annotations

from typing import Sequence

from ..errors import UserError
from ..registry import METHODS
from .base import GenerationConfig, MethodResult, Question
from pydantic import Field

from .prompts import PromptedMethod, PromptedOptions, fill, translated_attribute

LEVELS = ("1", "2", "3", "4", "5", "6")


class PrefixBaseline(PromptedMethod):
    section = "prefix"

    class Options(PromptedOptions):
        attribute: str = Field("gender", description='the social attribute the instruction names; "auto": '
                                                     "each question's own (BBQ: the item's category)")
    level: str = "1"

    def prefix_text(self, q: Question | None = None) -> str:
        t = self.templates(q)
        levels = t.get("levels", {})
        if self.level not in levels:
            raise UserError(f"prompts: no prefix level {self.level!r} (section prefix.levels)")
        lang = self._run_language if q is None else self.question_language(q)
        attribute, native = self.opts.attribute, None
        if attribute == "auto":  # per question; the identity shows the placeholder
            meta = (q.meta or {}) if q is not None else {}
            native = meta.get("attribute_native") if lang != "en" else None
            attribute = "{attribute}" if q is None else str(meta.get("attribute") or "gender")
        if lang != "en" and attribute != "{attribute}":
            attribute = native or translated_attribute(lang, attribute)
        return fill(levels[self.level], attribute=attribute)

    def identity(self):
        ident = super().identity()
        ident["prompts"] = {"user": self.templates()["user"], "prefix": self.prefix_text()}
        return ident

    def answer(self, questions: Sequence[Question], gen: GenerationConfig | None = None) -> list[MethodResult]:
        gen = gen or GenerationConfig()
        convs = [[{"role": "user", "content": fill(self.templates(q)["user"], prefix=self.prefix_text(q),
                                                    **self.base_values(q))}] for q in questions]
        outs = self._chat(convs, gen)
        return [
            MethodResult(text=o.text, transcript=c + [{"role": "assistant", "content": o.text}], calls=1,
                         prompt_tokens=o.prompt_tokens, completion_tokens=o.completion_tokens)
            for c, o in zip(convs, outs)
        ]


def _make(level: str) -> type:
    cls = type(f"Prefix{level}", (PrefixBaseline,), {
        "name": f"prefix-{level}", "level": level,
        "__doc__": f"Chen et al. instruction prefix, level {level} of 6 (1 abstract .. 6 specific); option attribute.",
    })
    return METHODS.register(f"prefix-{level}")(cls)


for _lv in LEVELS:
    globals()[f"Prefix{_lv}"] = _make(_lv)
