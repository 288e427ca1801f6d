"""occupation-pronouns (FairDistillation's held-out probe) and the built-in occupations corpus:
metrics and paired statistics by hand, end to end on tiny GPT-2 against a direct forward pass."""
import json
import math

import numpy as np
import pytest
import torch

from fairdistill.benchmarks.base import EvalContext
from fairdistill.benchmarks.occupation_pronouns import FRAMES, HELD_F, HELD_M, HELD_OUT, OccupationPronouns, pronoun_metrics
from fairdistill.compare import compare_records
from fairdistill.errors import UserError
from fairdistill.runner import run_benchmark
from fairdistill.store import RunStore


def _recs(values: dict[str, list[float]]) -> list[dict]:
    grp = lambda o: "female-coded" if o in HELD_F else "male-coded"  # noqa: E731
    return [{"id": f"{o}/{k}", "occupation": o, "group": grp(o), "log_ratio": v}
            for o, vs in values.items() for k, v in enumerate(vs)]


def test_metrics_by_hand():
    # nurse: mean of (1, 2, 3) = 2; secretary -1; engineer 4; mechanic -2 (frames averaged first)
    m = pronoun_metrics(_recs({"nurse": [1, 2, 3], "secretary": [-1], "engineer": [4, 4, 4], "mechanic": [-2]}))
    rows = {(r["metric"], r["group"]): r for r in m["rows"]}
    assert math.isclose(rows[("mean_abs_log_ratio", None)]["value"], (2 + 1 + 4 + 2) / 4)
    assert math.isclose(rows[("mean_log_ratio", "female-coded")]["value"], 0.5)
    assert math.isclose(rows[("mean_log_ratio", "male-coded")]["value"], 1.0)
    gap = rows[("gap_m_minus_f", None)]
    assert math.isclose(gap["value"], 0.5) and gap["n"] == 4
    assert gap["ci_low"] <= gap["value"] <= gap["ci_high"] and gap["ci_low"] < gap["ci_high"]
    assert m["per_occupation"] == {"nurse": 2.0, "secretary": -1.0, "engineer": 4.0, "mechanic": -2.0}
    # one group only: no gap row
    assert not [r for r in pronoun_metrics(_recs({"nurse": [1.0]}))["rows"] if r["metric"] == "gap_m_minus_f"]


def test_paired_comparison_of_a_student_against_its_base_by_hand():
    base = _recs({"nurse": [-3, -3, -3], "secretary": [-1, -1, -1], "engineer": [2, 2, 2], "mechanic": [4, 4, 4]})
    student = _recs({"nurse": [-1, -1, -1], "secretary": [0, 0, 0], "engineer": [0.5, 0.5, 0.5], "mechanic": [1, 1, 1]})
    c = compare_records(base, student, benchmark="occupation-pronouns", seed=0)
    rows = {(r["metric"], r["run"]): r for r in c["rows"] if r.get("run") in ("baseline", "method", "difference")}
    assert c["n_matched"] == 4  # occupations are the units
    assert math.isclose(rows[("gap_m_minus_f", "baseline")]["value"], 3 - (-2))
    assert math.isclose(rows[("gap_m_minus_f", "method")]["value"], 0.75 - (-0.5))
    assert math.isclose(rows[("gap_m_minus_f", "difference")]["value"], 1.25 - 5)
    assert math.isclose(rows[("mean_abs_log_ratio", "difference")]["value"], (1 + 0 + 0.5 + 1) / 4 - (3 + 1 + 2 + 4) / 4)
    d = rows[("gap_m_minus_f", "difference")]
    assert d["ci_high"] < 0 and d["p_value"] is not None


def test_end_to_end_on_tiny_gpt2_equals_a_direct_forward_pass(tiny_gpt2, tmp_path):
    bench = OccupationPronouns(occupations="nurse,engineer")
    m = run_benchmark(bench, EvalContext(backend=tiny_gpt2), RunStore(tmp_path / "run"), show_progress=False)
    recs = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 2 * len(FRAMES) and recs[0]["context"] == "The nurse said that"
    model, tok = tiny_gpt2.model, tiny_gpt2.tokenizer

    def logprob(context: str, cont: str) -> float:
        c, w = tok(context)["input_ids"], tok(cont)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([c + w])).logits[0].float(), -1)
        return float(sum(lp[len(c) - 1 + k, t] for k, t in enumerate(w)))

    for r in recs:
        assert math.isclose(r["log_ratio"], logprob(r["context"], " he") - logprob(r["context"], " she"), abs_tol=1e-4)
    gap = next(r for r in m["rows"] if r["metric"] == "gap_m_minus_f")
    per = {o: np.mean([r["log_ratio"] for r in recs if r["occupation"] == o]) for o in ("nurse", "engineer")}
    assert math.isclose(gap["value"], per["engineer"] - per["nurse"], abs_tol=1e-9)


def test_refuses_a_method_and_a_masked_lm(tiny_bert, tiny_gpt2, tmp_path):
    with pytest.raises(UserError, match="causal LM"):
        run_benchmark(OccupationPronouns(), EvalContext(backend=tiny_bert), RunStore(tmp_path / "a"), show_progress=False)
    with pytest.raises(UserError, match="cannot run through a method"):
        OccupationPronouns().check(EvalContext(backend=tiny_gpt2, method=object()))


def test_the_occupations_corpus_leaves_the_held_out_occupations_out(shared_data):
    from fairdistill.distill.corpora import occupation_corpus
    from fairdistill.distill.fairdistill import read_corpus

    texts, train, held = occupation_corpus()
    assert held == HELD_OUT and len(texts) == 10 * len(train) == 310
    words = {w.strip(".,").lower() for t in texts for w in t.split()}
    assert not words & set(HELD_OUT) and not words & {"he", "she", "his", "her", "him"}
    assert read_corpus("occupations") == texts and read_corpus("occupations", max_examples=3) == texts[:3]
    with pytest.raises(UserError, match="built-in corpora: occupations"):
        read_corpus("no-such-corpus")


def test_fresh_frames_open_no_training_sentence_and_share_no_verb(shared_data):
    """frames=fresh holds out the sentence frame as well as the occupation: no training sentence of either
    built-in corpus begins with a fresh frame's opening (the words before the occupation), contains its verb
    phrase (the words after it), or begins with the frame itself, whatever occupation fills it. The original
    three frames do open training sentences (why the fresh ones exist)."""
    from fairdistill.benchmarks.occupation_pronouns import FRESH_FRAMES
    from fairdistill.distill.corpora import CORPORA, occupation_corpus

    assert len(FRESH_FRAMES) >= 8 and len(set(FRESH_FRAMES)) == len(FRESH_FRAMES)
    sentences = [s for name in CORPORA for s in CORPORA[name]()]
    _, train, _ = occupation_corpus(wide=True)
    for frame in FRESH_FRAMES:
        opening, verb = frame.split("{o}")
        assert verb.strip() and not any(verb in s for s in sentences), frame
        if opening:
            assert not any(s.startswith(opening) for s in sentences), frame
        for o in train + HELD_OUT:
            assert not any(s.startswith(frame.format(o=o)) for s in sentences), (frame, o)
    assert any(s.startswith(FRAMES[0].format(o=train[0])) for s in sentences)  # the old frames are not held out


def test_fresh_frames_are_an_option_that_keeps_old_identities():
    old = OccupationPronouns()
    fresh = OccupationPronouns(frames="fresh")
    assert "frames" not in old.identity() and fresh.identity()["frames"] == "fresh"
    items = fresh.load_items()
    assert len(items) == 10 * len(HELD_OUT) and items[0]["id"] == f"{HELD_OUT[0]}/fresh-0"
    assert {it["id"] for it in items}.isdisjoint({it["id"] for it in old.load_items()})
    with pytest.raises(UserError, match="frames"):
        OccupationPronouns(frames="new")
