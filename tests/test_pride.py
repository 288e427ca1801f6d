"""permute=pride (PriDe, Zheng et al. 2024): the letter prior estimated on a sample asked in every rotation,
divided out of each item's letter probabilities, at one call per item."""
from __future__ import annotations

import math

import pytest

from fairdistill.backends.base import Backend
from fairdistill.benchmarks import permute as P
from fairdistill.errors import UserError
from fairdistill.runner import RunSpec, execute


def test_prior_and_choice_by_hand():
    # one item whose content favours option 1 by 1 nat, asked in 3 rotations by a model that adds +2 nats to "A"
    def letter_lps(order, content=(0.0, 1.0, 0.0), bias=(2.0, 0.0, 0.0)):
        return [content[order[d]] + bias[d] for d in range(3)]

    rots = P.orders(3, "cyclic")
    prior = P.pride_prior([[letter_lps(o) for o in rots]])
    # each option visits each letter once: the mean removes the content, the prior is softmax(bias)
    z = sum(math.exp(b) for b in (2.0, 0.0, 0.0))
    assert prior == pytest.approx([math.exp(2) / z, 1 / z, 1 / z])
    plain = letter_lps([0, 1, 2])
    assert max(range(3), key=lambda d: plain[d]) == 0  # the plain argmax is the biased letter
    assert P.pride_choice(plain, prior) == 1  # PriDe recovers the option the content favours
    assert P.pride_sample([f"i{k}" for k in range(100)], 0.05, 10, 0) == P.pride_sample(
        [f"i{k}" for k in range(100)], 0.05, 10, 0) and len(P.pride_sample([str(k) for k in range(400)], 0.05, 10, 0)) == 20


class LetterBiased(Backend):
    """Scripted chat backend: letter log-probs = +1.5 nats for the option whose text the question marks with '*'
    (the right answer, scripted) plus +2.5 nats for letter A, whatever the question."""

    name = "scripted"

    def __init__(self):
        self.calls = 0

    @property
    def can_chat(self):
        return True

    def capabilities(self):
        return {"chat_template", "chat_choice_logprobs"}

    def describe(self):
        return {"backend": "scripted"}

    def chat_choice_logprobs(self, conversations, candidates):
        out = []
        for conv in conversations:
            self.calls += 1
            lines = [ln for ln in conv[-1]["content"].splitlines() if ln[:3] in ("A. ", "B. ", "C. ")]
            lps = [(1.5 if ln.endswith("*") else 0.0) + (2.5 if ln.startswith("A") else 0.0) for ln in lines]
            z = math.log(sum(math.exp(x) for x in lps)) + 0.7  # some mass on other tokens
            out.append([x - z for x in lps])
        return out


def test_pride_run_recovers_content_from_a_letter_biased_scripted_model(bbq_dir, tmp_path, monkeypatch):
    from fairdistill.benchmarks import bbq as bbq_mod

    real = bbq_mod.BBQ.option_texts

    def starred(self, row):  # mark the right option, so the scripted model "knows" it
        texts = list(real(self, row))
        texts[int(row["label"])] += " *"
        return texts

    monkeypatch.setattr(bbq_mod.BBQ, "option_texts", starred)
    be = LetterBiased()
    opts = {"mode": "generate", "categories": "Age,Religion", "condition": "ambig", "data": str(bbq_dir)}
    spec = RunSpec(model="scripted", benchmark="bbq", options={**opts, "permute": "pride"}, limit=100,
                   out=tmp_path / "pride")
    _, m = execute(spec, be, show_progress=False)
    acc = next(r["value"] for r in m["rows"] if r["metric"] == "accuracy" and r["category"] == "overall")
    pr = m["pride"]
    assert acc == 1.0  # the letter prior divided out, the content decides
    assert pr["prior"]["A"] > 0.6 and pr["sample_items"] == 10 and pr["calls_for_prior"] == 30
    assert be.calls == 200 + 30 and pr["calls_per_item"] == pytest.approx(1.15)  # 100 items per category
    assert pr["answers_changed_by_prior"] > 0
    # asked once per item without the control, the scripted model answers "A" and is right only where A is right
    with pytest.raises(UserError, match="permute=pride runs the plain model"):
        execute(RunSpec(model="scripted", benchmark="bbq", options={**opts, "permute": "pride"}, method="reprompting",
                        limit=5, out=tmp_path / "m"), be, show_progress=False)


def test_pride_needs_letter_logprobs(bbq_dir, tmp_path):
    class NoLetters(LetterBiased):
        def capabilities(self):
            return {"chat_template"}

    spec = RunSpec(model="scripted", benchmark="bbq", limit=3, out=tmp_path / "r",
                   options={"mode": "generate", "permute": "pride", "categories": "Age", "data": str(bbq_dir)})
    with pytest.raises(UserError, match="needs the letter log-probabilities"):
        execute(spec, NoLetters(), show_progress=False)


def test_pride_end_to_end_on_a_tiny_model_and_old_identities_kept(tiny_llama_chat, bbq_dir, tmp_path):
    from fairdistill.benchmarks.bbq import BBQ

    assert "pride_sample" not in BBQ(permute="cyclic").identity()
    assert BBQ(permute="pride", pride_sample=0.1).identity()["pride_sample"] == 0.1
    spec = RunSpec(model="tiny", benchmark="bbq", limit=12, out=tmp_path / "p",
                   options={"mode": "generate", "permute": "pride", "categories": "Age", "data": str(bbq_dir)})
    _, m = execute(spec, tiny_llama_chat, show_progress=False)
    assert sum(m["pride"]["prior"].values()) == pytest.approx(1.0) and m["pride"]["sample_items"] == 10
