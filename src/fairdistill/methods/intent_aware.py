"""Intent-aware self-correction (after Anantaprayoon et al. 2025): ``intent-aware``.

Intent is explicit in three places: a debiasing instruction, chain-of-thought in the answer, and
structured feedback that scores the answer on several bias aspects. Templates: ``prompts.yaml``,
section ``intent_aware`` (the published prompts are not available; ours are documented there).

Conversation structure for one question (A = answering backend, F = feedback backend, which is A
itself unless ``feedback_model`` is given)::

    A  user       <debiasing instruction> Think step by step ... {question}
    A  assistant  <answer 0: reasoning + answer>                    (cot_tokens)
    repeat for round r = 1 .. K (K = option max_rounds, default 2):
        F  user       (fresh conversation) question + latest answer + "score each aspect 1-5",
                      reply format "stereotype: N / evidence: N / fairness: N / comment: ..."
        F  assistant  <scores>                                      (feedback_tokens)
        stop early if every aspect's score >= threshold (default 4)
        A  user       Feedback on your answer: <F's reply> Revise your answer ...
        A  assistant  <answer r>                                    (cot_tokens)
    A  user       {instruction}           (e.g. "Answer with a single letter.")
    A  assistant  <final answer>          (the benchmark's max_new_tokens)

So a question takes 1 + (feedback calls) + (refinements) + 1 calls: at least 3 (scores pass at
once), at most 2 + 2K. An aspect whose score cannot be parsed counts as failing (and is recorded
as None). ``MethodResult.extra["rounds"]`` keeps every round's scores, the feedback text, whether
it passed, and ``stopped``: "threshold" or "max_rounds".

Options: ``feedback_model`` (model string or Backend; must chat), ``max_rounds`` (K, >= 0),
``threshold`` (default 4), ``cot_tokens`` (160), ``feedback_tokens`` (64), ``final_turn``
(default true; false = the last answer's text is the final text), ``prompts``.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from ..backends.base import Backend
from ..errors import UserError
from ..registry import METHODS
from .base import GenerationConfig, MethodResult, Question
from pydantic import Field

from .prompts import PromptedMethod, PromptedOptions, backend_list, fill


def parse_scores(text: str, aspects: Sequence[str]) -> dict[str, float | None]:
    """``{aspect: score or None}`` from lines like ``stereotype: 4`` (also ``Stereotype - 4/5``)."""
    out: dict[str, float | None] = {}
    for a in aspects:
        m = re.search(rf"(?im)^\W*{re.escape(a)}\W*[:=\-]\s*\**\s*(\d+(?:\.\d+)?)", text or "")
        out[a] = float(m.group(1)) if m else None
    return out


@METHODS.register("intent-aware")
class IntentAware(PromptedMethod):
    """Debiasing instruction + chain of thought + scored multi-aspect feedback + refinement;
    early stop at a threshold or after K rounds (options: feedback_model, max_rounds, threshold)."""

    name = "intent-aware"
    section = "intent_aware"
    translatable = False  # feedback scores are parsed from English aspect names

    class Options(PromptedOptions):
        feedback_model: Any = Field(None, description="model string (or backend) that gives the feedback; default: the model itself")
        max_rounds: int = Field(2, ge=0, description="feedback and refinement rounds at most")
        threshold: float = Field(4.0, description="every aspect scoring at least this (1-5) stops the rounds")
        cot_tokens: int = Field(160, ge=1, description="length cap of the reasoned answers")
        feedback_tokens: int = Field(64, ge=1, description="length cap of the feedback")
        final_turn: bool = Field(True, description="ask for the answer in the benchmark's format at the end")

    def __init__(self, backend: Backend, **options: Any):
        super().__init__(backend, **options)
        fm = options.get("feedback_model")
        fbs = backend_list(fm, "intent-aware feedback_model", cache_of=backend) if fm is not None else []
        if len(fbs) > 1:
            raise UserError("intent-aware takes one feedback_model, not a list")
        self.feedback_backend: Backend = fbs[0] if fbs else backend
        self.max_rounds = self.opts.max_rounds
        self.threshold = self.opts.threshold
        self.cot_tokens = self.opts.cot_tokens
        self.feedback_tokens = self.opts.feedback_tokens
        self.final_turn = self.opts.final_turn
        self.aspects: dict[str, str] = dict(self.t["aspects"])

    def check(self) -> None:
        super().check()
        if self.feedback_backend is not self.backend:
            self.feedback_backend.require(chat=True, what=f"method {self.name!r} (feedback_model)")

    def feedback_prompt(self, q: Question, answer: str) -> str:
        aspects = "\n".join(f"- {a}: {d}" for a, d in self.aspects.items())
        fmt = "\n".join(f"{a}: <1-5>" for a in self.aspects)
        return fill(self.t["feedback"], answer=answer, aspects=aspects, format=fmt, **self.base_values(q))

    def passes(self, scores: dict[str, float | None]) -> bool:
        return all(s is not None and s >= self.threshold for s in scores.values())

    def answer(self, questions: Sequence[Question], gen: GenerationConfig | None = None) -> list[MethodResult]:
        """Rounds per item; under option rotation (several questions with one ``meta["id"]``) the
        reasoning and feedback rounds run once, on the item's first question, and each rotation asks
        only the final answer, restating its own options (``final_rotated`` template)."""
        gen = gen or GenerationConfig()
        self.check_languages(questions)
        lead: dict = {}
        src = [lead.setdefault((q.meta or {}).get("id") or ("#", k), k) for k, q in enumerate(questions)]
        leads = sorted(set(src))
        if len(leads) == len(questions) or not self.final_turn:
            return self._answer(questions, gen)
        done = dict(zip(leads, self._answer([questions[k] for k in leads], gen, final=False)))
        return self._final_turns(questions, src, done, gen)

    def _final_turns(self, questions, src, done, gen) -> list[MethodResult]:
        convs, results = [], []
        for k, q in enumerate(questions):
            base = done[src[k]]
            own = src[k] == k
            text = fill(self.t["final" if own else "final_rotated"], **self.base_values(q))
            log = [dict(m) for m in base.transcript] + [{"role": "user", "content": text, "backend": "answer"}]
            convs.append([{"role": m["role"], "content": m["content"]} for m in log if m.get("backend") == "answer"])
            results.append((log, base, own))
        outs = self._chat(convs, gen)
        out = []
        for (log, base, own), o in zip(results, outs):
            log.append({"role": "assistant", "content": o.text, "backend": "answer"})
            extra = {**base.extra, **({} if own else {"rounds_shared": True})}
            out.append(MethodResult(text=o.text, transcript=log, calls=(base.calls if own else 0) + 1,
                                    prompt_tokens=(base.prompt_tokens if own else 0) + o.prompt_tokens,
                                    completion_tokens=(base.completion_tokens if own else 0) + o.completion_tokens,
                                    extra=extra))
        return out

    def _answer(self, questions: Sequence[Question], gen: GenerationConfig, final: bool = True) -> list[MethodResult]:
        n = len(questions)
        convs = [[{"role": "user", "content": fill(self.t["answer"], **self.base_values(q))}] for q in questions]
        calls = [0] * n
        ptok = [0] * n
        ctok = [0] * n
        # one combined log of every turn, both backends, in order (feedback turns tagged)
        logs: list[list[dict]] = [[dict(c[0], backend="answer")] for c in convs]
        rounds: list[list[dict]] = [[] for _ in range(n)]
        stopped = ["max_rounds"] * n
        latest = [""] * n

        def account(k: int, o) -> None:
            calls[k] += 1
            ptok[k] += o.prompt_tokens
            ctok[k] += o.completion_tokens

        outs = self._chat(convs, gen, max_new_tokens=self.cot_tokens)
        for k, o in enumerate(outs):
            account(k, o)
            convs[k].append({"role": "assistant", "content": o.text})
            logs[k].append({"role": "assistant", "content": o.text, "backend": "answer"})
            latest[k] = o.text

        active = list(range(n))
        for r in range(1, self.max_rounds + 1):
            if not active:
                break
            fb_convs = [[{"role": "user", "content": self.feedback_prompt(questions[k], latest[k])}] for k in active]
            fb = self._chat(fb_convs, gen, backend=self.feedback_backend, max_new_tokens=self.feedback_tokens)
            refine = []
            for k, c, o in zip(active, fb_convs, fb):
                account(k, o)
                scores = parse_scores(o.text, list(self.aspects))
                ok = self.passes(scores)
                rounds[k].append({"round": r, "scores": scores, "passed": ok, "feedback": o.text})
                logs[k].append(dict(c[0], backend="feedback", round=r))
                logs[k].append({"role": "assistant", "content": o.text, "backend": "feedback", "round": r})
                if ok:
                    stopped[k] = "threshold"
                else:
                    msg = {"role": "user", "content": fill(self.t["refine"], feedback=o.text, **self.base_values(questions[k]))}
                    convs[k].append(msg)
                    logs[k].append(dict(msg, backend="answer", round=r))
                    refine.append(k)
            if refine:
                ref = self._chat([convs[k] for k in refine], gen, max_new_tokens=self.cot_tokens)
                for k, o in zip(refine, ref):
                    account(k, o)
                    convs[k].append({"role": "assistant", "content": o.text})
                    logs[k].append({"role": "assistant", "content": o.text, "backend": "answer", "round": r})
                    latest[k] = o.text
            active = refine

        final_text = list(latest)
        if final and self.final_turn and n:
            for k, q in enumerate(questions):
                msg = {"role": "user", "content": fill(self.t["final"], **self.base_values(q))}
                convs[k].append(msg)
                logs[k].append(dict(msg, backend="answer"))
            outs = self._chat(convs, gen)
            for k, o in enumerate(outs):
                account(k, o)
                convs[k].append({"role": "assistant", "content": o.text})
                logs[k].append({"role": "assistant", "content": o.text, "backend": "answer"})
                final_text[k] = o.text
        fb_name = self.feedback_backend.describe() if self.feedback_backend is not self.backend else "self"
        return [
            MethodResult(
                text=final_text[k], transcript=logs[k], calls=calls[k], prompt_tokens=ptok[k], completion_tokens=ctok[k],
                extra={"rounds": rounds[k], "stopped": stopped[k], "reasoned_answer": latest[k],
                       "feedback_model": fb_name, "threshold": self.threshold, "max_rounds": self.max_rounds},
            )
            for k in range(n)
        ]
