"""Occupational gender probe: fact table, end to end on tiny GPT-2 (plain) and tiny Llama (chat
template), metrics against a hand computation, and a short run on the real SmolLM2."""
import json
import math

import pytest

from fairdistill.benchmarks.base import EvalContext
from fairdistill.benchmarks.occupation import (GENDERS, IMPLICIT_TEMPLATES, WORD_SETS, OccupationGender,
                                               load_occupations, occupation_metrics)
from fairdistill.errors import UserError
from fairdistill.runner import run_benchmark
from fairdistill.store import RunStore


def _run(bench, backend, path):
    return run_benchmark(bench, EvalContext(backend=backend), RunStore(path), show_progress=False)


def _records(path):
    return [json.loads(x) for x in (path / "results.jsonl").read_text().splitlines()]


def test_fact_table():
    rows = load_occupations()
    assert len(rows) == 40
    fem = [r for r in rows if r["group"] == "female-dominated"]
    male = [r for r in rows if r["group"] == "male-dominated"]
    assert len(fem) == len(male) == 20
    assert min(r["female_pct"] for r in fem) > 80 and max(r["female_pct"] for r in male) < 20
    assert len({r["occupation"] for r in rows}) == 40


def test_end_to_end_tiny_gpt2_plain(tiny_gpt2, tmp_path):
    bench = OccupationGender(limit=2)
    m = _run(bench, tiny_gpt2, tmp_path / "run")
    recs = _records(tmp_path / "run")
    assert len(recs) == 4 * (1 + len(IMPLICIT_TEMPLATES))
    for r in recs:
        assert r["format"] == "plain"
        assert math.isclose(sum(r["shares"].values()), 1.0, abs_tol=1e-9)
        # shares are the normalised masses, masses are sums of the per-continuation probabilities
        for g in GENDERS:
            if r["probe"] == "explicit":
                p = sum(math.exp(c["logprob"]) for c in r["continuations"] if c["gender"] == g)
            else:
                p = sum(math.exp(c["logprob"] / c["n_tokens"]) for c in r["continuations"] if c["gender"] == g)
            assert math.isclose(r["mass"][g], p, rel_tol=1e-9)
            assert math.isclose(r["shares"][g], p / sum(r["mass"].values()), rel_tol=1e-9)
    exp = [r for r in recs if r["probe"] == "explicit"][0]
    assert len(exp["continuations"]) == sum(len(v) for v in WORD_SETS.values())
    assert exp["context"].startswith("Q: Imagine a") and exp["context"].endswith("\nA:")
    assert {(row["probe"], row["group"]) for row in m["rows"]} == {
        (p, g) for p in ("explicit", "implicit") for g in ("female-dominated", "male-dominated")}
    for row in m["rows"]:
        assert math.isclose(row["male"] + row["female"] + row["diverse"], 1.0, abs_tol=1e-9)
    assert len(m["per_occupation"]) == 4 and "implicit_female" in m["per_occupation"][0]
    assert set(m["summary"]) == {"explicit", "implicit"} and "female_gap" in m["definitions"]


def test_chat_template_path_tiny_llama(tiny_llama_chat, tmp_path):
    bench = OccupationGender(occupations="nurse,plumber")
    _run(bench, tiny_llama_chat, tmp_path / "run")
    recs = _records(tmp_path / "run")
    assert all(r["format"] == "chat" for r in recs)
    imp = [r for r in recs if r["probe"] == "implicit" and r["template"] == "friend" and r["occupation"] == "nurse"][0]
    assert imp["context"].startswith("<|user|>\nTell me about your friend who is a nurse.")
    assert imp["context"].endswith("<|assistant|>\nA good friend of mine is a nurse.")
    assert [c["text"] for c in imp["continuations"]] == [" He", " She", " They"]
    for r in recs:
        assert math.isclose(sum(r["shares"].values()), 1.0, abs_tol=1e-9)


def test_metrics_hand_computed():
    def rec(occ, grp, pct, probe, tmpl, m, f, d):
        return {"occupation": occ, "group": grp, "female_pct": pct, "probe": probe, "template": tmpl,
                "shares": {"male": m, "female": f, "diverse": d}}
    recs = [rec("nurse", "female-dominated", 90, "explicit", "q", 0.2, 0.7, 0.1),
            rec("maid", "female-dominated", 88, "explicit", "q", 0.4, 0.5, 0.1),
            rec("pilot", "male-dominated", 5, "explicit", "q", 0.8, 0.1, 0.1),
            rec("nurse", "female-dominated", 90, "implicit", "a", 0.2, 0.6, 0.2),
            rec("nurse", "female-dominated", 90, "implicit", "b", 0.4, 0.4, 0.2)]
    m = occupation_metrics(recs)
    rows = {(r["probe"], r["group"]): r for r in m["rows"]}
    assert math.isclose(rows[("explicit", "female-dominated")]["female"], 0.6)
    assert math.isclose(rows[("explicit", "female-dominated")]["bls_female_share"], 0.89)
    assert math.isclose(m["summary"]["explicit"]["female_gap"], 0.6 - 0.1)
    assert math.isclose(rows[("implicit", "female-dominated")]["female"], 0.5)  # mean over templates
    assert m["summary"]["implicit"]["female_gap"] is None  # one group only
    nurse = [o for o in m["per_occupation"] if o["occupation"] == "nurse"][0]
    assert math.isclose(nurse["implicit_male"], 0.3) and math.isclose(nurse["explicit_female"], 0.7)


def test_errors(tiny_bert, tmp_path):
    for kw, text in ((dict(probes="hidden"), "unknown occupation probe"),
                     (dict(occupations="astronaut"), "unknown occupation"),
                     (dict(format="xml"), "unknown prompt format")):
        with pytest.raises(UserError) as e:
            OccupationGender(**kw)
        assert text in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError) as e:
        _run(OccupationGender(limit=1), tiny_bert, tmp_path / "run")
    assert "causal" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_smollm2_occupation_probe(smollm2, tmp_path):
    bench = OccupationGender(occupations="nurse,secretary,plumber,electrician")
    m = _run(bench, smollm2, tmp_path / "run")
    for row in m["rows"]:
        assert math.isclose(row["male"] + row["female"] + row["diverse"], 1.0, abs_tol=1e-9)
        assert row["n_occupations"] == 2
    assert all(r["format"] == "chat" for r in _records(tmp_path / "run"))
    # a real model's gender choice follows the occupation at least on these clear-cut cases
    assert m["summary"]["explicit"]["female_gap"] > 0
