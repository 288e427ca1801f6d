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
    share_rows = [row for row in m["rows"] if row["metric"] == "share"]  # female_gap / pearson rows have no group
    assert {(row["probe"], row["group"]) for row in share_rows} == {
        (p, g) for p in ("explicit", "implicit") for g in ("female-dominated", "male-dominated")}
    for row in share_rows:
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
                     (dict(format="xml"), "option format: 'xml' is not one of auto, chat, plain")):
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
    for row in (r for r in m["rows"] if r["metric"] == "share"):
        assert math.isclose(row["male"] + row["female"] + row["diverse"], 1.0, abs_tol=1e-9)
        assert row["n_occupations"] == 2
    assert all(r["format"] == "chat" for r in _records(tmp_path / "run"))
    # a real model's gender choice follows the occupation at least on these clear-cut cases
    assert m["summary"]["explicit"]["female_gap"] > 0


# -- confidence intervals ---------------------------------------------------------------------------
def _occ_records(shares):
    """One explicit record per (occupation, group, female_pct, female share); male takes the rest."""
    return [{"occupation": o, "group": g, "female_pct": pct, "probe": "explicit", "template": "question",
             "shares": {"male": 1 - f, "female": f, "diverse": 0.0}} for o, g, pct, f in shares]


def test_ci_rows_hand_computed():
    """Female share = BLS share / 100 for every occupation: r is 1 in every resample. Female shares
    0.5 and 0.7 in the female-dominated group: resampled means 0.5 / 0.6 / 0.7 with chances
    1/4, 1/2, 1/4, so the CI is [0.5, 0.7]. The male-dominated shares are equal, so their CI collapses
    and the gap moves only with the female-dominated mean: [0.5 - 0.1, 0.7 - 0.1]."""
    m = occupation_metrics(_occ_records([("nurse", "female-dominated", 50, 0.5), ("maid", "female-dominated", 70, 0.7),
                                         ("pilot", "male-dominated", 10, 0.1), ("welder", "male-dominated", 10, 0.1)]))
    rows = {(r["metric"], r["group"], r["gender"]): r for r in m["rows"]}
    for r in m["rows"]:
        assert {"metric", "value", "ci_low", "ci_high", "n", "probe"} <= set(r)
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    fem = rows[("share", "female-dominated", "female")]
    assert (fem["value"], fem["ci_low"], fem["ci_high"], fem["n"]) == (pytest.approx(0.6), 0.5, 0.7, 2)
    assert fem["female"] == fem["value"] and fem["n_occupations"] == 2  # the old wide fields stay
    male_grp = rows[("share", "male-dominated", "female")]
    assert (male_grp["ci_low"], male_grp["ci_high"]) == (male_grp["value"], male_grp["value"])
    gap = rows[("female_gap", None, None)]
    assert gap["value"] == pytest.approx(0.5) and gap["n"] == 4
    assert gap["ci_low"] == pytest.approx(0.4) and gap["ci_high"] == pytest.approx(0.6)
    r = rows[("pearson_r_bls", None, None)]
    assert r["value"] == pytest.approx(1.0) and r["ci_low"] == pytest.approx(1.0) and r["ci_high"] == pytest.approx(1.0)
    assert m["summary"]["explicit"]["female_gap"] == gap["value"]  # summary unchanged, same number
    assert "within their group" in m["definitions"]["ci_low/ci_high"]


def test_ci_deterministic_for_a_seed():
    occs = load_occupations()
    recs = _occ_records([(o["occupation"], o["group"], o["female_pct"], 0.3 + 0.004 * o["female_pct"] + 0.05 * (k % 3))
                         for k, o in enumerate(occs)])
    a, b, other = occupation_metrics(recs, seed=2), occupation_metrics(recs, seed=2), occupation_metrics(recs, seed=3)
    assert a["rows"] == b["rows"]
    assert [r["value"] for r in other["rows"]] == [r["value"] for r in a["rows"]]
    assert [(r["ci_low"], r["ci_high"]) for r in other["rows"]] != [(r["ci_low"], r["ci_high"]) for r in a["rows"]]
    for r in a["rows"]:
        assert r["ci_low"] <= r["value"] <= r["ci_high"]
    gap = next(r for r in a["rows"] if r["metric"] == "female_gap")
    corr = next(r for r in a["rows"] if r["metric"] == "pearson_r_bls")
    assert gap["ci_low"] < gap["value"] < gap["ci_high"] and corr["ci_low"] < corr["value"] < corr["ci_high"] <= 1
    assert gap["n"] == corr["n"] == 40
