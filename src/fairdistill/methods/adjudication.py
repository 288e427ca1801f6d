"""Cross-model adjudication (after CMAF, IEEE JSTSP 2026): ``adjudication``.

A panel of backends answers each question; every answer is judged for bias by the *other* panel
members (never by the member that wrote it); the verdicts decide which answers are accepted, and
the accepted answers vote for the final option. Templates: ``prompts.yaml``, section
``adjudication`` (our wording; the paper's prompts are not public).

Panel: member 0 is the method's own backend; option ``panel`` adds the others (model strings,
comma-separated on the CLI, or Backend objects). A panel of one is an error.

Calls for one question with a panel of M (each a fresh one-turn conversation)::

    for each member i:            i  user  {question} {instruction}        -> answer_i
    for each answer i, judge j!=i: j  user  question + "Proposed answer: answer_i"
                                          + "Reply with one word: BIASED or UNBIASED" -> verdict_ij

M answers + M(M-1) judgements. A verdict is "reject" if the reply starts with BIASED (or says
"is biased"/"yes"), "accept" if it starts with UNBIASED/NOT BIASED (or "no"), otherwise "abstain" (a leading option
letter such as "A. BIASED" is skipped; a reply cut short, "BIAS"/"UNBIAS", still counts; an echo of
the instruction, "BIASED or UNBIASED", abstains).

Combination: answer i is *accepted* when its accept verdicts outnumber its reject verdicts
(ties, including all-abstain, are rejected). The accepted answers vote for the option they name
(parsed from the letter or option text); the option with most votes wins, ties going to the
option of the lowest-numbered member. If no answer is accepted, the answer with the highest
(accepts - rejects) margin is used (ties: lowest member), and ``extra["fallback"]`` is true. The
final text is the winning member's own answer text, so the benchmark parses it unchanged.

``MethodResult.extra`` keeps ``answers`` (member, text, option), ``judgements`` (answer_of,
judge, verdict, text), ``accepted`` (per answer), ``votes`` (option -> count), ``final_member``.
The transcript lists every turn, each message tagged with ``member`` and ``stage``.

Options: ``panel`` (required, >= 1 other member), ``judge_tokens`` (default 8), ``prompts``.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from ..backends.base import Backend
from ..errors import UserError
from ..registry import METHODS
from .base import GenerationConfig, MethodResult, Question
from pydantic import Field

from .prompts import PromptedMethod, PromptedOptions, backend_list, fill, parse_option


def parse_verdict(text: str) -> str:
    """"accept", "reject" or "abstain" from a judge's reply. A leading option letter ("A. BIASED")
    is skipped; a reply cut off by the token limit ("BIAS", "UNBIAS") still counts."""
    t = (text or "").strip().lower().replace("*", "")
    t = re.sub(r"^(?:[^a-z]+|[a-c][.):]\s*)+", "", t)
    if re.search(r"\b(?:un)?biased\s+or\s+(?:un)?bi", t):  # the instruction echoed back (maybe cut short)
        return "abstain"
    if re.match(r"(unbias|not biased|no\b)", t):
        return "accept"
    if re.match(r"(bias|yes\b)", t):
        return "reject"
    if re.search(r"\b(unbiased|not biased|isn't biased)\b", t):
        return "accept"
    if re.search(r"\bbiased\b", t):
        return "reject"
    return "abstain"


@METHODS.register("adjudication")
class Adjudication(PromptedMethod):
    """A panel answers; each answer is judged for bias by the other members; accepted answers vote
    (options: panel=MODEL[,MODEL...] (the other members), judge_tokens)."""

    name = "adjudication"
    section = "adjudication"
    translatable = False  # verdicts are parsed as English words (BIASED / UNBIASED)

    class Options(PromptedOptions):
        panel: Any = Field(None, description="the other panel members: model strings (comma-separated) or backends")
        judge_tokens: int = Field(8, ge=1, description="length cap of each verdict")

    def __init__(self, backend: Backend, **options: Any):
        super().__init__(backend, **options)
        spec = options.get("panel")
        if isinstance(spec, Backend):
            spec = [spec]
        n_given = len(spec) if isinstance(spec, (list, tuple)) else len([s for s in str(spec or "").split(",") if s.strip()])
        if n_given < 1:
            raise UserError("adjudication needs a panel of at least two models: add panel=MODEL[,MODEL...] "
                            "(the other members; the evaluated model is the first)")
        self.members: list[Backend] = [backend] + backend_list(spec, "adjudication panel", cache_of=backend)
        self.judge_tokens = self.opts.judge_tokens

    def check(self) -> None:
        for i, m in enumerate(self.members):
            m.require(chat=True, what=f"method {self.name!r} (panel member {i}: {m.name})")

    def member_names(self) -> list[str]:
        return [f"m{i}:{m.name}" for i, m in enumerate(self.members)]

    def answer(self, questions: Sequence[Question], gen: GenerationConfig | None = None) -> list[MethodResult]:
        gen = gen or GenerationConfig()
        self.check_languages(questions)
        n, M = len(questions), len(self.members)
        names = self.member_names()
        logs: list[list[dict]] = [[] for _ in range(n)]
        calls, ptok, ctok = [0] * n, [0] * n, [0] * n

        # 1. every member answers every question
        answers: list[list[str]] = [[""] * M for _ in range(n)]
        for i, be in enumerate(self.members):
            convs = [[{"role": "user", "content": fill(self.t["answer"], **self.base_values(q))}] for q in questions]
            outs = self._chat(convs, gen, backend=be)
            for k, (c, o) in enumerate(zip(convs, outs)):
                answers[k][i] = o.text
                calls[k] += 1
                ptok[k] += o.prompt_tokens
                ctok[k] += o.completion_tokens
                logs[k] += [dict(c[0], member=names[i], stage="answer"),
                            {"role": "assistant", "content": o.text, "member": names[i], "stage": "answer"}]

        # 2. each member j judges every other member's answer (never its own)
        judgements: list[list[dict]] = [[] for _ in range(n)]
        for j, be in enumerate(self.members):
            jobs = [(k, i) for k in range(n) for i in range(M) if i != j]
            convs = [[{"role": "user", "content": fill(self.t["judge"], answer=answers[k][i],
                                                        **self.base_values(questions[k]))}] for k, i in jobs]
            outs = self._chat(convs, gen, backend=be, max_new_tokens=self.judge_tokens) if jobs else []
            for (k, i), c, o in zip(jobs, convs, outs):
                calls[k] += 1
                ptok[k] += o.prompt_tokens
                ctok[k] += o.completion_tokens
                v = parse_verdict(o.text)
                judgements[k].append({"answer_of": names[i], "judge": names[j], "verdict": v, "text": o.text})
                logs[k] += [dict(c[0], member=names[j], stage=f"judge {names[i]}"),
                            {"role": "assistant", "content": o.text, "member": names[j], "stage": f"judge {names[i]}"}]

        # 3. combine
        results = []
        for k, q in enumerate(questions):
            margin = [0] * M
            for jd in judgements[k]:
                i = names.index(jd["answer_of"])
                margin[i] += {"accept": 1, "reject": -1}.get(jd["verdict"], 0)
            accepted = [m > 0 for m in margin]
            options = [parse_option(a, q) for a in answers[k]]
            votes: dict[int, int] = {}
            for i in range(M):
                if accepted[i] and options[i] is not None:
                    votes[options[i]] = votes.get(options[i], 0) + 1
            fallback = not votes
            if votes:
                best = max(votes.values())
                win_opt = next(options[i] for i in range(M)
                               if accepted[i] and options[i] is not None and votes[options[i]] == best)
                final_member = next(i for i in range(M) if accepted[i] and options[i] == win_opt)
            else:
                top = max(margin)
                final_member = next(i for i in range(M) if margin[i] == top)
            results.append(MethodResult(
                text=answers[k][final_member], transcript=logs[k], calls=calls[k],
                prompt_tokens=ptok[k], completion_tokens=ctok[k],
                extra={
                    "answers": [{"member": names[i], "text": answers[k][i], "option": options[i]} for i in range(M)],
                    "judgements": judgements[k],
                    "accepted": {names[i]: accepted[i] for i in range(M)},
                    "margin": {names[i]: margin[i] for i in range(M)},
                    "votes": {str(o): c for o, c in sorted(votes.items())},
                    "final_member": names[final_member],
                    "fallback": fallback,
                },
            ))
        return results
