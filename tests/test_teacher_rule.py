"""The pre-registered teacher rule (v2): reduction in stereotyped answers, non-inferior accuracy, no swap."""
from __future__ import annotations

import json

import pytest

from fairdistill.errors import UserError
from fairdistill.teacher_rule import TeacherRule, judge

RULE = {
    "candidates": ["reprompting", "explanation", "prefix-3"],
    "primary": {"benchmark": "amb", "cell": "ambig", "statistic": "stereotyped_rate"},
    "noninferior": [{"benchmark": "dis", "cell": "disambig", "statistic": "accuracy", "margin": 0.05},
                    {"benchmark": "amb", "cell": "ambig", "statistic": "accuracy", "margin": 0.05}],
    "swap": {"benchmark": "amb", "cell": "ambig", "statistic": "anti_stereotyped_rate", "share": 0.5},
}


def _row(cell, metric, value, lo, hi):
    return {"condition": cell, "metric": metric, "run": "difference", "value": value, "ci_low": lo, "ci_high": hi,
            "p_value": 0.01, "n": 210}


def _comps(**methods):
    """method -> (stereo diff+CI, anti diff+CI, amb acc diff+CI, dis acc diff+CI, tokens)."""
    out = {}
    for m, (st, anti, acc_a, acc_d, tokens) in methods.items():
        cost = {"tokens_per_item": {"baseline": 100.0, "method": tokens}}
        out[(m, "amb")] = {"rows": [_row("ambig", "stereotyped_rate", *st), _row("ambig", "anti_stereotyped_rate", *anti),
                                    _row("ambig", "accuracy", *acc_a)], "cost": cost}
        out[(m, "dis")] = {"rows": [_row("disambig", "accuracy", *acc_d)], "cost": cost}
    return lambda m, b: out.get((m, b))


GOOD = ((-0.10, -0.15, -0.05), (0.01, -0.02, 0.04), (0.09, 0.04, 0.14), (0.0, -0.03, 0.03), 300.0)


def test_the_largest_qualifying_reduction_is_chosen():
    comps = _comps(reprompting=GOOD,
                   explanation=((-0.20, -0.26, -0.14), (0.02, -0.01, 0.05), (0.18, 0.12, 0.24), (-0.01, -0.04, 0.02), 900.0),
                   **{"prefix-3": ((-0.30, -0.60, 0.01), (0.0, -0.02, 0.02), (0.3, 0.0, 0.6), (0.0, -0.02, 0.02), 150.0)})
    c = judge(TeacherRule.model_validate(RULE), comps)
    assert c["method"] == "explanation"  # prefix-3 drops more, but its CI reaches 0
    by = {r["method"]: r for r in c["candidates"]}
    assert by["prefix-3"]["checks"]["primary"] is False and by["reprompting"]["qualifies"]
    assert "-0.200" in c["reason"] and "2 qualifying" in c["reason"]
    assert c["rule"]["primary"]["statistic"] == "stereotyped_rate"


def test_a_tie_goes_to_fewer_tokens():
    same = lambda tokens: ((-0.1, -0.15, -0.05), (0.0, -0.01, 0.01), (0.1, 0.05, 0.15), (0.0, -0.02, 0.02), tokens)  # noqa: E731
    c = judge(TeacherRule.model_validate(RULE), _comps(reprompting=same(500.0), explanation=same(200.0),
                                                       **{"prefix-3": same(350.0)}))
    assert c["method"] == "explanation"


def test_disambiguated_accuracy_loss_rejects_the_largest_reduction():
    comps = _comps(reprompting=GOOD,
                   explanation=((-0.25, -0.3, -0.2), (0.0, -0.01, 0.01), (0.25, 0.2, 0.3), (-0.04, -0.08, 0.0), 900.0),
                   **{"prefix-3": ((0.02, -0.02, 0.06), (0.0, -0.01, 0.01), (0.0, -0.02, 0.02), (0.0, -0.02, 0.02), 150.0)})
    c = judge(TeacherRule.model_validate(RULE), comps)
    by = {r["method"]: r for r in c["candidates"]}
    assert by["explanation"]["checks"] == {"primary": True, "noninferior": False, "not_a_swap": True}
    assert [n["passed"] for n in by["explanation"]["noninferior"]] == [False, True]  # -0.08 < -0.05 on disambig
    assert c["method"] == "reprompting"


def test_a_reduction_that_only_swaps_to_the_other_person_is_reported_not_chosen():
    swap = ((-0.25, -0.3, -0.2), (0.22, 0.17, 0.27), (0.03, -0.02, 0.08), (0.0, -0.02, 0.02), 300.0)
    comps = _comps(reprompting=GOOD, explanation=swap,
                   **{"prefix-3": ((0.0, -0.03, 0.03), (0.0, -0.01, 0.01), (0.0, -0.02, 0.02), (0.0, -0.02, 0.02), 150.0)})
    c = judge(TeacherRule.model_validate(RULE), comps)
    by = {r["method"]: r for r in c["candidates"]}
    assert by["explanation"]["checks"]["not_a_swap"] is False and not by["explanation"]["qualifies"]
    assert by["explanation"]["swap"]["difference"]["value"] == pytest.approx(0.22)
    assert c["method"] == "reprompting"


def test_no_qualifier_means_no_teacher_and_says_why():
    none = ((0.05, 0.0, 0.1), (0.0, -0.01, 0.01), (0.0, -0.02, 0.02), (0.0, -0.02, 0.02), 300.0)
    c = judge(TeacherRule.model_validate(RULE), _comps(reprompting=none, explanation=none, **{"prefix-3": none}))
    assert c["method"] is None and "no teacher, no student" in c["reason"]
    assert "reprompting: fails primary" in c["reason"] and len(c["candidates"]) == 3
    fb = judge(TeacherRule.model_validate({**RULE, "fallback": "reprompting"}),
               _comps(reprompting=none, explanation=none, **{"prefix-3": none}))
    assert fb["method"] == "reprompting" and "fallback" in fb["reason"]


def test_a_missing_comparison_is_named_before_anything_is_chosen():
    comps = _comps(reprompting=GOOD, explanation=GOOD)
    with pytest.raises(UserError, match=r"not yet compared: prefix-3 on amb, prefix-3 on dis"):
        judge(TeacherRule.model_validate(RULE), comps)


def test_the_study_applies_its_rule_to_the_comparison_files(tmp_path):
    from fairdistill.study import _Study, load_study

    cfg_file = tmp_path / "s.yaml"
    cfg_file.write_text("""
name: t
models: [{name: m, model: x}]
benchmarks:
  - {id: amb, name: bbq, options: {mode: generate, condition: ambig}}
  - {id: dis, name: bbq, options: {mode: generate, condition: disambig}}
methods:
  - {name: reprompting}
  - {name: explanation, options: {explain_tokens: 64}}
  - {name: prefix-3, options: {attribute: auto}}
""")
    cfg, cfg_dir = load_study(cfg_file)
    st = _Study(cfg, cfg_dir, tmp_path / "out", show_progress=False)
    read = _comps(reprompting=GOOD,
                  explanation=((-0.2, -0.26, -0.14), (0.0, -0.01, 0.01), (0.2, 0.1, 0.3), (0.0, -0.02, 0.02), 900.0),
                  **{"prefix-3": GOOD})
    for m in RULE["candidates"]:
        for b in ("amb", "dis"):
            d = tmp_path / "out" / "m" / f"{b}--{m}"
            d.mkdir(parents=True)
            (d / "comparison.json").write_text(json.dumps(read(m, b)))
    c = st.apply_teacher_rule("m", RULE)
    assert c["method"] == "explanation" and c["options"] == {"explain_tokens": 64}
    with pytest.raises(UserError, match="candidate 'intent-aware' is not among the study's methods"):
        st.apply_teacher_rule("m", {**RULE, "candidates": ["intent-aware"]})
    with pytest.raises(UserError, match="teacher_rule"):
        st.apply_teacher_rule("m", {**RULE, "primary": {"benchmark": "amb"}})
