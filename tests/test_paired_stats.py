"""Paired method-vs-baseline statistics, checked against independent computations:
scipy.stats.bootstrap (same generator, percentile method), hand-computed transition tables,
an exact McNemar p-value summed by hand, and bbq_metrics' point values."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from scipy import stats

from fairdistill.benchmarks import bbq_scoring
from fairdistill.benchmarks.bbq_scoring import bias_stat
from fairdistill.compare import compare_records, compare_run_dirs
from fairdistill.errors import UserError
from fairdistill.stats.paired import bootstrap_p, mcnemar_exact, transition_table
from fairdistill.store import RunStore


# -- hand-made tables ------------------------------------------------------------------------------
def test_transition_table_by_hand():
    base = [1, 1, 1, 0, 0, 0, 0, 1, 0, 1]
    meth = [1, 0, 1, 1, 1, 0, 1, 1, 0, 1]
    # items: cc, ci, cc, ic, ic, ii, ic, cc, ii, cc  -> cc 4, ci 1, ic 3, ii 2
    t = transition_table(np.array(base, bool), np.array(meth, bool))
    assert t["n"] == 10
    assert t["counts"] == {"correct->correct": 4, "correct->incorrect": 1, "incorrect->correct": 3,
                           "incorrect->incorrect": 2}
    assert t["percent"] == {"correct->correct": 40.0, "correct->incorrect": 10.0, "incorrect->correct": 30.0,
                            "incorrect->incorrect": 20.0}


def _exact_two_sided(k: int, n: int) -> float:
    """Exact binomial test (p=0.5), two-sided by summing outcomes no more likely than k."""
    pk = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
    return min(1.0, sum(p for p in pk if p <= pk[k] * (1 + 1e-7)))


@pytest.mark.parametrize("n_ci,n_ic", [(3, 9), (0, 5), (4, 4), (1, 0), (10, 2)])
def test_mcnemar_exact_matches_hand_computation_and_binomtest(n_ci, n_ic):
    base = [True] * n_ci + [False] * n_ic + [True] * 7 + [False] * 3
    meth = [False] * n_ci + [True] * n_ic + [True] * 7 + [False] * 3
    r = mcnemar_exact(base, meth)
    assert (r["correct->incorrect"], r["incorrect->correct"]) == (n_ci, n_ic)
    assert r["p_value"] == pytest.approx(_exact_two_sided(n_ic, n_ci + n_ic), rel=1e-9)
    assert r["p_value"] == pytest.approx(stats.binomtest(n_ic, n_ci + n_ic, 0.5).pvalue)


def test_mcnemar_no_discordant_pairs_is_one():
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0


def test_bootstrap_p():
    assert bootstrap_p(np.array([1.0, 2.0, 3.0, -1.0])) == pytest.approx(0.5)  # 2 * min(1/4, 3/4)
    assert bootstrap_p(np.array([0.0, 0.0])) == 1.0
    assert bootstrap_p(np.array([0.1, 0.2, np.nan])) == 0.0
    assert bootstrap_p(np.array([np.nan])) is None


def test_bias_stat_by_hand():
    # 5 counted answers, 4 biased -> 2*4/5 - 1 = 0.6; s_AMB with accuracy 2/8 -> 0.75 * 0.6
    biased = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    counted = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
    correct = np.array([0, 0, 0, 0, 0, 1, 1, 0], bool)
    assert bias_stat(biased, counted) == pytest.approx(0.6)
    assert bias_stat(biased, counted, correct) == pytest.approx(0.45)
    assert np.isnan(bias_stat(biased, np.zeros(8, bool)))


# -- real BBQ rows with synthetic predictions ---------------------------------------------------
@pytest.fixture(scope="module")
def bbq_rows(bbq_dir):
    from fairdistill.benchmarks.bbq import load_category

    rows = []
    for cat in ("Age", "Religion"):
        rs = load_category(bbq_dir, cat)
        rng = random.Random(cat)
        for r in rng.sample(rs, 60):
            r["id"] = f"{cat}-{r['example_id']}"
            rows.append(r)
    return rows


def _predict(rows, seed, p_correct):
    rng = random.Random(seed)
    out = []
    for r in rows:
        rec = dict(r)
        u = rng.random()
        if u < 0.05:
            rec["pred"] = None  # unparsed
        elif u < 0.05 + p_correct:
            rec["pred"] = int(r["label"])
        else:
            rec["pred"] = rng.choice([i for i in range(3) if i != int(r["label"])])
        rec["calls"], rec["prompt_tokens"], rec["completion_tokens"] = 1, 100, 2
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def runs(bbq_rows):
    base = _predict(bbq_rows, 1, 0.45)
    meth = _predict(bbq_rows, 2, 0.6)
    for r in meth:
        r["calls"], r["prompt_tokens"], r["completion_tokens"] = 2, 250, 4
    return base, meth


def _arrays(recs):
    c = np.array([r["pred"] is not None and r["pred"] == r["label"] for r in recs])
    b = [bbq_scoring.is_biased(r, r["pred"]) for r in recs]
    return c, np.array([x is not None for x in b]), np.array([bool(x) for x in b])


def _scipy_ci(data, statistic, seed=0):
    res = stats.bootstrap(data, statistic, paired=True, vectorized=True, n_resamples=1000,
                          method="percentile", confidence_level=0.95, rng=np.random.default_rng(seed))
    return res.confidence_interval.low, res.confidence_interval.high


def test_point_values_equal_bbq_metrics(runs):
    base, meth = runs
    comp = compare_records(base, meth, benchmark="bbq", seed=0)
    for run, recs in (("baseline", base), ("method", meth)):
        m = bbq_scoring.bbq_metrics(recs, pred_key="pred", seed=0)
        want = {(r["condition"], r["metric"]): r["value"] for r in m["rows"] if r["category"] == "overall"}
        for cond, bias in (("ambig", "s_AMB"), ("disambig", "s_DIS")):
            got = comp["per_condition"][cond]
            assert got["accuracy"][run]["value"] == pytest.approx(want[(cond, "accuracy")])
            assert got[bias][run]["value"] == pytest.approx(want[(cond, "bias_score")])
            diff = got[bias]["difference"]["value"]
            for rate in ("stereotyped_rate", "anti_stereotyped_rate"):
                assert got[rate][run]["value"] == pytest.approx(want[(cond, rate)])
    assert diff == pytest.approx(comp["per_condition"]["disambig"]["s_DIS"]["method"]["value"]
                                 - comp["per_condition"]["disambig"]["s_DIS"]["baseline"]["value"])


@pytest.mark.parametrize("seed", [0, 7])
def test_cis_equal_scipy_bootstrap(runs, seed):
    base, meth = runs
    comp = compare_records(base, meth, benchmark="bbq", seed=seed)
    for cond in ("ambig", "disambig"):
        B = [r for r in base if r["context_condition"] == cond]
        ids = {r["id"]: r for r in meth}
        M = [ids[r["id"]] for r in B]
        cb, nb, bb = _arrays(B)
        cm, nm, bm = _arrays(M)
        res = comp["per_condition"][cond]
        amb = cond == "ambig"
        res["bias_score"] = res["s_AMB" if amb else "s_DIS"]

        def acc_diff(a, b, axis=-1):
            return b.mean(axis) - a.mean(axis)

        def bias_one(c, n, b, axis=-1):
            return bias_stat(b, n, c if amb else None)

        def bias_diff(c1, n1, b1, c2, n2, b2, axis=-1):
            return bias_one(c2, n2, b2) - bias_one(c1, n1, b1)

        assert res["accuracy"]["difference"]["ci"] == pytest.approx(_scipy_ci((cb, cm), acc_diff, seed), abs=1e-12)
        assert res["accuracy"]["method"]["ci"] == pytest.approx(
            _scipy_ci((cm,), lambda a, axis=-1: a.mean(axis), seed), abs=1e-12)
        assert res["bias_score"]["baseline"]["ci"] == pytest.approx(_scipy_ci((cb, nb, bb), bias_one, seed), abs=1e-12)
        assert res["bias_score"]["difference"]["ci"] == pytest.approx(
            _scipy_ci((cb, nb, bb, cm, nm, bm), bias_diff, seed), abs=1e-12)
        # the transition table, recounted
        t = comp["transitions"][cond]["counts"]
        assert t["correct->correct"] == int((cb & cm).sum()) and t["incorrect->correct"] == int((~cb & cm).sum())
        assert sum(t.values()) == len(B)
        assert comp["tests"][cond]["accuracy"]["p_value"] == pytest.approx(
            stats.binomtest(int((~cb & cm).sum()), int((cb != cm).sum()), 0.5).pvalue)


def test_rows_are_tidy(runs):
    comp = compare_records(*runs, benchmark="bbq", seed=0)
    main = [r for r in comp["rows"] if not r["metric"].startswith("transition")]
    assert {(r["condition"], r["metric"], r["run"]) for r in main} == {
        (c, m, run) for c, ms in (("ambig", ("accuracy", "s_AMB")), ("disambig", ("accuracy", "s_DIS")))
        for m in ms + ("stereotyped_rate", "anti_stereotyped_rate") for run in ("baseline", "method", "difference")}
    # the rates' differences, recounted by hand on the ambiguous items
    base, meth = runs
    amb = comp["per_condition"]["ambig"]
    ids = {r["id"]: r for r in meth}
    B = [r for r in base if r["context_condition"] == "ambig"]
    sb = np.mean([bbq_scoring.is_biased(r, r["pred"]) is True for r in B])
    sm = np.mean([bbq_scoring.is_biased(ids[r["id"]], ids[r["id"]]["pred"]) is True for r in B])
    assert amb["stereotyped_rate"]["difference"]["value"] == pytest.approx(sm - sb)
    for r in main:
        assert r["ci_low"] <= r["value"] <= r["ci_high"] or r["run"] == "difference"
        assert ("p_value" in r) == (r["run"] == "difference")
    assert {"rows", "transitions", "tests", "cost", "definitions"} <= set(comp)


def test_compare_run_dirs(tmp_path, runs):
    base, meth = runs
    for name, recs, secs in (("base", base, 12.0), ("meth", meth[:-3], 60.0)):  # method run lacks 3 items
        st = RunStore(tmp_path / name)
        st.write_config({"identity": {"benchmark": "bbq", "method": {"method": name}}})
        st.append(recs)
        st.close()
        st.write_metrics({"rows": [], "meta": {"seconds_this_session": secs, "new_items_this_session": len(recs)}})
    comp = compare_run_dirs(tmp_path / "base", tmp_path / "meth", seed=0)
    assert comp["n_matched"] == len(base) - 3 and comp["n_only_baseline"] == 3 and comp["n_only_method"] == 0
    c = comp["cost"]
    assert c["calls_per_item"] == {"baseline": 1.0, "method": 2.0, "ratio": 2.0}
    assert c["tokens_per_item"]["baseline"] == 102.0 and c["tokens_per_item"]["method"] == 254.0
    assert c["seconds_per_item"]["baseline"] == pytest.approx(12.0 / len(base))
    assert c["seconds_per_item"]["method"] == pytest.approx(60.0 / (len(meth) - 3))
    assert sum(comp["transitions"]["ambig"]["counts"].values()) + sum(
        comp["transitions"]["disambig"]["counts"].values()) == len(base) - 3
    json.dumps(comp)
    with pytest.raises(UserError, match="no results.jsonl"):
        compare_run_dirs(tmp_path / "base", tmp_path / "nothing")


def test_no_shared_items_is_an_error(runs):
    base, meth = runs
    with pytest.raises(UserError, match="share no item ids"):
        compare_records(base[:5], meth[5:10], benchmark="bbq")


def test_runs_of_different_benchmarks_are_refused(tmp_path, runs):
    for name, bench in (("a", "bbq"), ("b", "b-score")):
        st = RunStore(tmp_path / name)
        st.write_config({"identity": {"benchmark": bench}})
        st.append(runs[0][:3])
        st.close()
    with pytest.raises(UserError, match="different benchmarks"):
        compare_run_dirs(tmp_path / "a", tmp_path / "b")


def test_a_benchmark_without_paired_outcomes_says_so(runs):
    with pytest.raises(UserError, match="'crows-pairs' has no paired comparison"):
        compare_records(runs[0], runs[1], benchmark="crows-pairs")
