"""``fairdistill doctor MODEL [--reference MODEL]``: a one-minute check of a backend before a long run.

Each check gives a verdict (ok / warn / fail / n/a) with its number:

* **capabilities**: what the backend declares (chat, log-likelihoods, model object, ...);
* **log-prob canary**: for a server, whether its echoed prompt log-probs pass the canary
  (:func:`fairdistill.backends.openai.canary_failure`); in-process models compute their own;
* **chat template**: whether the model can be asked a chat question (generation mode, every method);
* **parseable answers**: the share of 20 probe questions (``probe_items.jsonl``: written for fairdistill in
  BBQ's format, three lettered options, not items of any dataset) answered with a letter or an option;
* **letter skew**: the most frequent letter's share over its share among the right answers (1 = none; above 2
  a position control such as ``permute=cyclic`` is needed);
* **bf16 vs float32**: for an in-process model in bf16, the share of the probe answers float32 gives too;
* **speed and memory**: probe questions per second, the process's peak resident memory;
* **reference** (``--reference``): the share of probe answers another backend (e.g. the in-process model
  beside a llama.cpp server) gives too, and the first disagreements.
"""
from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

PROBE_FILE = Path(__file__).with_name("probe_items.jsonl")
LETTERS = "ABC"


@dataclass
class Check:
    name: str
    verdict: str  # ok | warn | fail | n/a
    value: str
    note: str = ""


@dataclass
class Report:
    model: str
    checks: list[Check] = field(default_factory=list)
    answers: list[int | None] = field(default_factory=list)
    disagreements: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.verdict == "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "ok": self.ok, "checks": [c.__dict__ for c in self.checks],
                "answers": self.answers, "disagreements": self.disagreements}


def probe_items() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PROBE_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def _ask(backend, items: list[dict[str, Any]]) -> tuple[list[int | None], float]:
    """The option each probe question is answered with (None: unparsed), and seconds taken."""
    from ..backends.base import GenerationRequest
    from ..benchmarks.languages import language, lettered_question, norm, parse_choice
    from ..methods.base import user_turn

    lang = language("en")
    questions = [lettered_question(lang, it["context"], it["question"], [it[f"ans{i}"] for i in range(3)])
                 for it in items]
    reqs = [GenerationRequest(messages=[{"role": "user", "content": user_turn(q)}], max_new_tokens=16)
            for q in questions]
    t0 = time.perf_counter()
    outs = backend.generate(reqs)
    secs = time.perf_counter() - t0
    answers = []
    for it, q, o in zip(items, questions, outs):
        unknown = next((i for i in range(3) if lang.is_unknown(norm(q.options[i]))), None)
        answers.append(parse_choice(q.options, unknown, o.text, lang)[0])
    return answers, secs


def _verdict(x: float, ok: float, warn: float, higher_is_better: bool = True) -> str:
    if higher_is_better:
        return "ok" if x >= ok else "warn" if x >= warn else "fail"
    return "ok" if x <= ok else "warn" if x <= warn else "fail"


def diagnose(backend, *, reference=None, items: Sequence[dict[str, Any]] | None = None) -> Report:
    """Run every check on ``backend`` (and ``reference``, if given); returns the :class:`Report`."""
    from ..errors import CapabilityError, UserError

    items = list(items or probe_items())
    rep = Report(model=getattr(backend, "name", str(backend)))
    caps = sorted(backend.capabilities()) + [x for x, on in (("chat", backend.can_chat),) if on]
    rep.checks.append(Check("capabilities", "ok", ", ".join(caps) or "none"))
    kind = (backend.describe() or {}).get("backend")
    if kind == "openai":
        try:
            scores = backend.can_score
        except (CapabilityError, UserError) as e:  # includes a server that died on the canary's request
            scores = False
            backend.why_no_scores = backend.why_no_scores or str(e)
        why = backend.why_no_scores
        rep.checks.append(Check("log-prob canary", "ok" if scores else ("fail" if why else "n/a"),
                                "passed" if scores else ("failed" if why else "no prompt log-probs"),
                                why or ("" if scores else "log-likelihood mode unavailable: use --mode generate")))
    else:
        rep.checks.append(Check("log-prob canary", "n/a", "in-process",
                                "log-probs computed here" if backend.can_score else "no log-likelihoods"))
    if not backend.can_chat:
        rep.checks.append(Check("chat template", "fail", "absent", "generation mode and methods need a chat model"))
        return rep
    rep.checks.append(Check("chat template", "ok", "present"))
    try:
        answers, secs = _ask(backend, items)
    except UserError as e:  # a server that stops answering (crashed, overloaded) is itself the finding
        rep.checks.append(Check("answers", "fail", "none", str(e)))
        return rep
    rep.answers = answers
    parsed = [a for a in answers if a is not None]
    share = len(parsed) / len(items)
    rep.checks.append(Check("parseable answers", _verdict(share, 0.9, 0.5), f"{len(parsed)}/{len(items)}",
                            "unparsed answers count as wrong in every benchmark"))
    if parsed:
        counts = [sum(a == k for a in parsed) for k in range(3)]
        gold = [sum(it["label"] == k for it in items) / len(items) for k in range(3)]
        top = max(range(3), key=lambda k: counts[k])
        skew = (counts[top] / len(parsed)) / gold[top] if gold[top] else float("inf")
        dist = " / ".join(f"{LETTERS[k]} {counts[k]}" for k in range(3))
        # a skew is a warning, not a failure: permute=cyclic controls it
        rep.checks.append(Check("letter skew", "ok" if skew <= 1.5 else "warn", f"{skew:.2f} ({dist})",
                                "above 1.5: control it with -o permute=cyclic" if skew > 1.5 else ""))
    rep.checks.append(Check("accuracy on the probe", "n/a", f"{sum(a == it['label'] for a, it in zip(answers, items))}"
                            f"/{len(items)}", "a sanity figure, not a benchmark"))
    if "model_object" in backend.capabilities() and hasattr(backend, "float32") and \
            str(getattr(getattr(backend, "model", None), "dtype", "")) in ("torch.bfloat16", "torch.float16"):
        with backend.float32():
            full, _ = _ask(backend, items)
        same = sum(a == b for a, b in zip(answers, full))
        rep.checks.append(Check("bf16 vs float32", _verdict(same / len(items), 0.95, 0.85), f"{same}/{len(items)}",
                                "the default dtype=auto decides near-ties in float32"))
    else:
        rep.checks.append(Check("bf16 vs float32", "n/a", "not a bf16 in-process model"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rep.checks.append(Check("speed", "ok", f"{len(items) / secs:.2f} questions/s", f"peak RSS {peak:.2f} GB"))
    if reference is not None:
        try:
            ref, _ = _ask(reference, items)
        except UserError as e:
            rep.checks.append(Check("agrees with reference", "fail", "no answers", str(e)))
            return rep
        same = sum(a == b for a, b in zip(answers, ref))
        rep.disagreements = [{"id": it["id"], "model": a, "reference": b} for it, a, b in zip(items, answers, ref)
                             if a != b][:5]
        rep.checks.append(Check("agrees with reference", _verdict(same / len(items), 0.9, 0.75),
                                f"{same}/{len(items)}", f"reference: {getattr(reference, 'name', reference)}"))
    return rep


__all__ = ["Check", "Report", "diagnose", "probe_items", "PROBE_FILE"]
