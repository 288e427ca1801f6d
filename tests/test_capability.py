"""Capability retention through lm-evaluation-harness on local task definitions (no hub access).

The stored numbers must be lm-eval's own: the test runs the benchmark, then calls
``lm_eval.simple_evaluate`` itself on the same model object and local tasks, and compares.
"""
import json
import math

import pytest

pytest.importorskip("lm_eval")

from fairdistill.benchmarks.base import EvalContext
from fairdistill.benchmarks.capability import Capability
from fairdistill.benchmarks import lm_eval_tasks as lt
from fairdistill.errors import CapabilityError, UserError
from fairdistill.runner import run_benchmark
from fairdistill.store import RunStore

SUBJECTS = ["anatomy", "astronomy"]
LIMIT = 4


@pytest.fixture(scope="module")
def cap_run(tiny_gpt2, tmp_path_factory):
    out = tmp_path_factory.mktemp("capability")
    bench = Capability(tasks=["mmlu", "gpqa_diamond"], subjects=SUBJECTS, limit=LIMIT, bootstrap_iters=0)
    metrics = run_benchmark(bench, EvalContext(backend=tiny_gpt2), RunStore(out), show_progress=False)
    return bench, metrics, out


def _row(metrics, lm_task, metric):
    hits = [r for r in metrics["rows"] if r["lm_eval_task"] == lm_task and r["metric"] == metric]
    assert len(hits) == 1, (lm_task, metric, metrics["rows"])
    return hits[0]


def test_stored_numbers_equal_lm_eval_output(cap_run, tiny_gpt2):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    bench, metrics, out = cap_run
    # lm-eval run by hand on the same model object and the same local task definitions
    lm = HFLM(pretrained=tiny_gpt2.model, tokenizer=tiny_gpt2.tokenizer, batch_size=8)
    tm = TaskManager(include_path=str(bench.task_dir()), include_defaults=False)
    ref = lm_eval.simple_evaluate(model=lm, tasks=["fd_mmlu", "fd_gpqa_diamond"], limit=LIMIT, task_manager=tm,
                                  bootstrap_iters=0, log_samples=True)
    for task in ["fd_mmlu", "fd_mmlu_anatomy", "fd_mmlu_astronomy", "fd_gpqa_diamond"]:
        for metric in (["acc", "acc_norm"] if task == "fd_gpqa_diamond" else ["acc"]):
            assert _row(metrics, task, metric)["value"] == ref["results"][task][f"{metric},none"]
    # subtasks saw LIMIT documents each; the group pools them
    assert _row(metrics, "fd_mmlu_anatomy", "acc")["n"] == LIMIT
    assert _row(metrics, "fd_mmlu", "acc")["n"] == LIMIT * len(SUBJECTS)
    # the stored per-sample records agree with the aggregate
    recs = {r["id"]: r for r in RunStore(out).load_results()}
    assert set(recs) == {"mmlu", "gpqa_diamond"}
    accs = [s["acc"] for s in recs["mmlu"]["samples"]["fd_mmlu_anatomy"]]
    assert len(accs) == LIMIT and math.isclose(sum(accs) / LIMIT, _row(metrics, "fd_mmlu_anatomy", "acc")["value"])
    # the raw lm-eval dict is in metrics.json
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["lm_eval"]["results"]["fd_mmlu"]["acc,none"] == ref["results"]["fd_mmlu"]["acc,none"]
    assert on_disk["summary"]["mmlu/acc"] == ref["results"]["fd_mmlu"]["acc,none"]


def test_rows_are_labelled_and_config_hashes_data(cap_run):
    bench, metrics, out = cap_run
    for r in metrics["rows"]:
        assert 0.0 <= r["value"] <= 1.0 and r["higher_is_better"] is True
        if r["stderr"] is not None:
            assert r["ci_low"] <= r["value"] <= r["ci_high"]
    assert "acc" in metrics["definitions"] and "higher is better" in metrics["definitions"]["acc"]
    cfg = json.loads((out / "config.json").read_text())
    hashed = cfg["data_sha256"]
    assert any(p.endswith("mmlu/test/anatomy_test.csv") for p in hashed)
    assert any(p.endswith("gpqa/gpqa_diamond.csv") for p in hashed)
    assert all(len(h) == 64 for h in hashed.values())
    assert cfg["identity"]["tasks"] == ["mmlu", "gpqa_diamond"] and cfg["identity"]["limit"] == LIMIT


def test_local_task_prompt_matches_lm_eval_mmlu(cap_run):
    """The local MMLU task asks lm-eval's own MMLU prompt (same template and choices)."""
    import yaml
    from pathlib import Path
    import lm_eval

    bench, _, _ = cap_run
    ours = yaml.safe_load((bench.task_dir() / "fd_mmlu" / "fd_mmlu_anatomy.yaml").read_text())
    theirs = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/mmlu/default/_default_template_yaml").read_text())
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target", "output_type", "metric_list"):
        assert ours[key] == theirs[key], key


def test_gpqa_shuffle_is_seeded(tmp_path):
    a = lt.write_gpqa(tmp_path / "a", None, seed=0)
    b = lt.write_gpqa(tmp_path / "b", None, seed=0)
    ra = (tmp_path / "a/fd_gpqa/gpqa_diamond.jsonl").read_text()
    assert ra == (tmp_path / "b/fd_gpqa/gpqa_diamond.jsonl").read_text() and a == b
    rows = [json.loads(x) for x in ra.splitlines()]
    assert len(rows) == 198 and {r["answer"] for r in rows} == {0, 1, 2, 3}


def test_ifeval_offline_dependencies_are_reported():
    problem = lt.ifeval_problem()
    bench = Capability(tasks=["ifeval"])
    if problem:
        with pytest.raises(UserError, match="IFEval"):
            bench.items()
        both = Capability(tasks=["mmlu", "ifeval"], subjects=["anatomy"])
        assert [it["id"] for it in both.items()] == ["mmlu"] and "ifeval" in both.skipped
    else:
        assert [it["lm_eval_task"] for it in bench.items()] == ["fd_ifeval"]


def test_errors(tiny_bert, tiny_gpt2):
    with pytest.raises(CapabilityError):
        Capability(tasks=["mmlu"]).check(EvalContext(backend=tiny_bert))
    with pytest.raises(UserError, match="not found"):
        Capability(tasks=["mmlu"], subjects=["no_such_subject"]).task_dir()
    with pytest.raises(UserError, match="methods"):
        Capability().check(EvalContext(backend=tiny_gpt2, method=object()))


def test_capability_goes_through_the_response_cache(cap_run, tiny_gpt2, tmp_path):
    """Under a response cache lm-eval's log-likelihoods are stored (keyed by the model's identity): a
    second run, results lost as on a fresh machine, asks the model nothing and reports the same numbers."""
    from fairdistill.backends.cache import CachingBackend

    _, plain, _ = cap_run
    bench = lambda: Capability(tasks=["mmlu", "gpqa_diamond"], subjects=SUBJECTS, limit=LIMIT, bootstrap_iters=0)  # noqa: E731
    first_be = CachingBackend(tiny_gpt2, tmp_path / "c.sqlite")
    first = run_benchmark(bench(), EvalContext(backend=first_be), RunStore(tmp_path / "a"), show_progress=False)
    assert first_be.misses > 0 and first_be.hits == 0
    again_be = CachingBackend(tiny_gpt2, tmp_path / "c.sqlite")
    again = run_benchmark(bench(), EvalContext(backend=again_be), RunStore(tmp_path / "b"), show_progress=False)
    assert again_be.misses == 0 and again_be.hits == first_be.misses
    for task in ("fd_mmlu", "fd_gpqa_diamond"):
        assert _row(again, task, "acc")["value"] == _row(first, task, "acc")["value"] == _row(plain, task, "acc")["value"]


def test_an_interrupted_capability_run_keeps_what_it_scored(cap_run, tiny_gpt2, tmp_path, monkeypatch):
    """lm-eval's requests reach the response cache a chunk at a time: a run stopped after its first chunk
    has that chunk stored, and the rerun asks the model only for the rest."""
    from lm_eval.models.huggingface import HFLM

    from fairdistill.backends.cache import CachingBackend
    from fairdistill.benchmarks import capability

    monkeypatch.setattr(capability, "LOGLIK_CHUNK", 4)
    bench = lambda: Capability(tasks=["mmlu"], subjects=SUBJECTS, limit=LIMIT, bootstrap_iters=0)  # noqa: E731
    real, calls = HFLM.loglikelihood, []

    def stopped(self, requests, disable_tqdm=False):
        calls.append(len(requests))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, requests, disable_tqdm=disable_tqdm)

    monkeypatch.setattr(HFLM, "loglikelihood", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(bench(), EvalContext(backend=CachingBackend(tiny_gpt2, tmp_path / "c.sqlite")),
                      RunStore(tmp_path / "a"), show_progress=False)
    assert calls == [4, 4]
    monkeypatch.setattr(HFLM, "loglikelihood", real)
    again = CachingBackend(tiny_gpt2, tmp_path / "c.sqlite")
    run_benchmark(bench(), EvalContext(backend=again), RunStore(tmp_path / "a"), show_progress=False)
    assert again.hits == 4 and again.misses > 4


def test_answer_positions_agree_with_lm_eval_accuracy(cap_run):
    """The position table counts the choice lm-eval scored: the per-sample argmax, which matches the gold
    exactly as often as lm-eval's acc says; gold shares are the targets' positions."""
    _, metrics, out = cap_run
    pos = metrics["position"]
    recs = {r["id"]: r for r in RunStore(out).load_results()}
    for task, lm_task in (("mmlu", "fd_mmlu"), ("gpqa_diamond", "fd_gpqa_diamond")):
        shares = [r for r in pos["rows"] if r["task"] == task and r["metric"] == "letter_share"]
        n = _row(metrics, lm_task, "acc")["n"]
        assert [r["letter"] for r in shares] == list("ABCD") and all(r["n"] == n for r in shares)
        samples = [s for ss in recs[task]["samples"].values() for s in ss]
        picks = [max(range(4), key=lambda j, s=s: s["filtered_resps"][j][0]) for s in samples]
        assert sum(p == s["target"] for p, s in zip(picks, samples)) / n == \
            pytest.approx(_row(metrics, lm_task, "acc")["value"])
        assert [r["value"] for r in shares] == pytest.approx([picks.count(j) / n for j in range(4)])
        assert [r["gold_share"] for r in shares] == pytest.approx(
            [sum(s["target"] == j for s in samples) / n for j in range(4)])


def test_answer_positions_flag_a_model_locked_on_one_letter():
    """A model that answers A to every question (a collapsed fine-tune) gets a warning naming the letter;
    one that tracks the gold answers does not; generation samples (IFEval) are left out."""
    from fairdistill.benchmarks.capability import answer_positions

    golds = [0, 1, 2, 3, 2, 1, 3, 0, 2, 3]

    def rec(pick):
        mc = [{"doc_id": i, "target": g, "filtered_resps": [[0.0 if j == pick(g) else -5.0, False] for j in range(4)]}
              for i, g in enumerate(golds)]
        return {"task": "mmlu", "samples": {"fd_mmlu_anatomy": mc},
                "lm_eval": {}, "lm_eval_task": "fd_mmlu"}

    locked = answer_positions([rec(lambda g: 0)])
    assert locked["warning"].startswith("mmlu: position bias: letter A takes 100% of answers")
    assert "check the model" in locked["warning"] and "permute" not in locked["warning"]
    bias = next(r for r in locked["rows"] if r["metric"] == "position_bias")
    assert bias["letter"] == "A" and bias["value"] == pytest.approx(1 / 0.2)
    honest = answer_positions([rec(lambda g: g)])
    assert honest["warning"] is None
    assert next(r for r in honest["rows"] if r["metric"] == "position_bias")["value"] == pytest.approx(1.0)
    gen = {"task": "ifeval", "samples": {"fd_ifeval": [{"doc_id": 0, "target": 0, "filtered_resps": ["text"]}]}}
    assert answer_positions([gen]) is None


def test_paired_comparison_counts_fixed_and_broken_questions():
    """Two runs are compared question by question: the transition table and McNemar's exact test come
    from the per-sample acc, whatever the runs' overall accuracies."""
    from scipy.stats import binomtest

    from fairdistill.compare import compare_records

    def rec(correct, task="mmlu"):
        return {"id": task, "task": task, "lm_eval_task": "fd_" + task, "lm_eval": {},
                "samples": {f"fd_{task}_anatomy": [{"doc_id": i, "acc": float(c)} for i, c in enumerate(correct)]}}

    base = [1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 1]
    method = [0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 1]  # 5 broken, 1 fixed
    out = compare_records([rec(base)], [rec(method)], benchmark="capability")
    row = {r["run"]: r for r in out["rows"] if r["metric"] == "accuracy"}
    assert row["baseline"]["value"] == pytest.approx(8 / 12) and row["method"]["value"] == pytest.approx(4 / 12)
    assert row["difference"]["value"] == pytest.approx(-4 / 12)
    test = out["tests"]["mmlu"]["accuracy"]
    assert (test["correct->incorrect"], test["incorrect->correct"]) == (5, 1)
    assert row["difference"]["p_value"] == pytest.approx(binomtest(1, 6, 0.5).pvalue)
    # a sample without a 0/1 score cannot be paired
    bad = rec(base)
    bad["samples"]["fd_mmlu_anatomy"][0]["acc"] = 0.5
    with pytest.raises(UserError, match="not 0 or 1"):
        compare_records([bad], [rec(method)], benchmark="capability")
    with pytest.raises(UserError, match="no per-sample scores"):
        compare_records([{"id": "mmlu", "task": "mmlu", "samples": {}}], [rec(method)], benchmark="capability")


def test_paired_comparison_of_two_capability_run_folders(cap_run):
    """compare() on a real run folder: every question of every task is a unit, and a run compared with
    itself changes nothing."""
    from fairdistill.compare import compare

    _, metrics, out = cap_run
    res = compare(out, out)
    assert res["n_matched"] == len(SUBJECTS) * LIMIT + LIMIT
    for task, lm_task in (("mmlu", "fd_mmlu"), ("gpqa_diamond", "fd_gpqa_diamond")):
        row = {r["run"]: r for r in res["rows"] if r["metric"] == "accuracy" and r["condition"] == task}
        assert row["baseline"]["value"] == pytest.approx(_row(metrics, lm_task, "acc")["value"])
        assert row["difference"]["value"] == 0
        assert res["tests"][task]["accuracy"]["n_discordant"] == 0
