"""BBQ end to end: both scoring modes on tiny models, resume after interruption, CLI errors."""
import json
import shutil

import pytest

from fairdistill.benchmarks.base import EvalContext
from fairdistill.benchmarks.bbq import BBQ, HELM_UNKNOWN, unknown_index
from fairdistill.cli import main
from fairdistill.runner import run_benchmark
from fairdistill.store import RunStore


def _metric(metrics, category, condition, metric):
    for r in metrics["rows"]:
        if r["category"] == category and r["condition"] == condition and r["metric"] == metric:
            return r
    raise KeyError((category, condition, metric))


def test_loglik_end_to_end_tiny_gpt2(tiny_gpt2, tmp_path):
    bench = BBQ(categories=["Age", "Religion"], limit=12, mode="loglik")
    m = run_benchmark(bench, EvalContext(backend=tiny_gpt2), RunStore(tmp_path), show_progress=False)
    recs = RunStore(tmp_path).load_results()
    assert len(recs) == 24 and len({r["id"] for r in recs}) == 24
    assert all(r["pred"] in (0, 1, 2) and len(r["scores"]) == 3 for r in recs)
    # the prediction is the argmax of the stored option scores
    assert all(r["pred"] == max(range(3), key=lambda k: r["scores"][k]) for r in recs)
    acc = _metric(m, "overall", "ambig", "accuracy")
    ambig = [r for r in recs if r["context_condition"] == "ambig"]
    assert acc["n"] == len(ambig)
    assert acc["value"] == pytest.approx(sum(r["pred"] == r["label"] for r in ambig) / len(ambig))


def test_helm_protocol_scores_twelve_choices(tiny_gpt2, tmp_path):
    bench = BBQ(categories=["Religion"], limit=6, mode="loglik", options="helm")
    run_benchmark(bench, EvalContext(backend=tiny_gpt2), RunStore(tmp_path), show_progress=False)
    recs = RunStore(tmp_path).load_results()
    for r in recs:
        assert len(r["scores"]) == 12
        best = max(range(12), key=lambda k: r["scores"][k])
        expected = unknown_index(r) if best >= 2 else [i for i in range(3) if i != unknown_index(r)][best]
        assert r["pred"] == expected
    assert len(HELM_UNKNOWN) == 10


def test_generate_mode_tiny_llama_chat(tiny_llama_chat, tmp_path):
    bench = BBQ(categories=["Age"], limit=6, mode="generate", max_new_tokens=4)
    m = run_benchmark(bench, EvalContext(backend=tiny_llama_chat), RunStore(tmp_path), show_progress=False)
    recs = RunStore(tmp_path).load_results()
    assert len(recs) == 6
    for r in recs:
        assert r["transcript"][0]["role"] == "user" and "A. " in r["transcript"][0]["content"]
        assert r["transcript"][-1]["role"] == "assistant" and r["calls"] == 1
        assert r["status"] in ("ok", "refusal", "unparseable")
    # a random model mostly babbles: every unparsed answer is counted, none dropped
    n_bad = sum(r["status"] != "ok" for r in recs)
    assert m["counts"]["n_unparsed"] == n_bad
    assert sum(v for k, v in m["counts"]["status"].items() if k != "ok") == n_bad


def test_generate_mode_needs_chat_model(tiny_gpt2, tmp_path):
    from fairdistill.errors import CapabilityError

    with pytest.raises(CapabilityError, match="chat"):
        run_benchmark(BBQ(categories=["Age"], limit=2, mode="generate"), EvalContext(backend=tiny_gpt2),
                      RunStore(tmp_path), show_progress=False)


def test_interrupted_run_resumes_to_identical_metrics(tiny_gpt2, tmp_path, monkeypatch):
    full = run_benchmark(BBQ(categories=["Religion"], limit=100, mode="loglik"), EvalContext(backend=tiny_gpt2),
                         RunStore(tmp_path / "full"), show_progress=False)

    bench = BBQ(categories=["Religion"], limit=100, mode="loglik")
    calls = {"n": 0}
    real = BBQ.evaluate

    def dying(self, items, ctx):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed halfway through
        return real(self, items, ctx)

    monkeypatch.setattr(BBQ, "evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(bench, EvalContext(backend=tiny_gpt2), RunStore(tmp_path / "resumed"), show_progress=False)
    partial = RunStore(tmp_path / "resumed").load_results()
    assert 0 < len(partial) < 100
    # a torn last line (process died mid-write) is discarded on resume
    with open(tmp_path / "resumed" / "results.jsonl", "a") as f:
        f.write('{"id": "Religion-99999", "pr')
    monkeypatch.setattr(BBQ, "evaluate", real)
    resumed = run_benchmark(bench, EvalContext(backend=tiny_gpt2), RunStore(tmp_path / "resumed"), show_progress=False)
    lines = (tmp_path / "resumed" / "results.jsonl").read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]
    assert len(ids) == 100 and len(set(ids)) == 100
    assert resumed["meta"]["new_items_this_session"] == 100 - len(partial)
    assert resumed["rows"] == full["rows"]


def test_resume_refuses_a_different_run(tiny_gpt2, tmp_path):
    from fairdistill.errors import UserError

    run_benchmark(BBQ(categories=["Religion"], limit=4, mode="loglik"), EvalContext(backend=tiny_gpt2),
                  RunStore(tmp_path), show_progress=False)
    with pytest.raises(UserError, match="different run"):
        run_benchmark(BBQ(categories=["Age"], limit=4, mode="loglik"), EvalContext(backend=tiny_gpt2),
                      RunStore(tmp_path), show_progress=False)


# -- CLI ------------------------------------------------------------------------------------------
def _cli(capsys, *args):
    code = main(list(args))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_eval_writes_run_and_table(tiny_gpt2_path, tmp_path, capsys):
    code, out, err = _cli(capsys, "eval", "bbq", "--model", str(tiny_gpt2_path), "--categories", "Age",
                          "--limit", "4", "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 0, err
    assert "bias_score" in out and (tmp_path / "run" / "metrics.json").exists()
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["identity"]["categories"] == ["Age"] and cfg["data_sha256"]


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["eval", "nosuchbench"], "unknown benchmark 'nosuchbench'"),
        (["eval", "bbq", "--model", "/no/such/model/dir"], "cannot load model"),
        (["eval", "bbq", "--categories", "Nope"], "unknown BBQ category 'Nope'"),
        (["eval", "bbq", "--data", "/no/such/folder"], "data folder not found"),
        (["eval", "bbq", "-o", "nosuch=1"], "has no option 'nosuch'"),
    ],
)
def test_cli_user_errors_are_one_line(args, pattern, capsys, tiny_gpt2_path):
    args = [a if a != "MODEL" else str(tiny_gpt2_path) for a in args]
    code, out, err = _cli(capsys, *args)
    assert code != 0
    assert pattern in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_malformed_jsonl_names_file_and_line(tmp_path, capsys, tiny_gpt2_path, bbq_dir):
    data = tmp_path / "bbq"
    data.mkdir()
    lines = (bbq_dir / "Religion.jsonl").read_text().splitlines()[:5]
    lines[3] = lines[3][:40]  # a truncated row
    (data / "Religion.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = _cli(capsys, "eval", "bbq", "--model", str(tiny_gpt2_path), "--data", str(data),
                          "--out", str(tmp_path / "r"), "--no-progress")
    assert code == 2 and f"{data / 'Religion.jsonl'}:4: malformed JSON line" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_score_bbq_predictions(tmp_path, capsys, shared_data):
    src = shared_data / "bbq_reference_predictions" / "UnifiedQA" / "preds_Religion.jsonl"
    code, out, err = _cli(capsys, "score", "bbq", "--predictions", str(src), "--column",
                          "unifiedqa-t5-11b_pred_arc", "--out", str(tmp_path / "m.json"))
    assert code == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    row = _metric(m, "Religion", "disambig", "bias_score")
    assert round(100 * row["value"], 1) == 3.5


def test_cli_score_bbq_into_an_existing_directory_and_unparsed_policy(tmp_path, capsys, shared_data):
    src = shared_data / "bbq_reference_predictions" / "UnifiedQA" / "preds_Age.jsonl"
    outdir = tmp_path / "scores"
    outdir.mkdir()
    got = {}
    for policy in ("incorrect", "exclude"):
        code, out, err = _cli(capsys, "score", "bbq", "--predictions", str(src), "--column",
                              "unifiedqa-t5-11b_pred_arc", "--unparsed", policy, "--out", str(outdir))
        assert code == 0, err
        got[policy] = json.loads((outdir / "metrics.json").read_text())
    # one ARC answer matches no option: the paper's protocol (exclude) gives its 48.9, ours 49.0
    assert round(100 * _metric(got["exclude"], "Age", "ambig", "bias_score")["value"], 1) == 48.9
    assert round(100 * _metric(got["incorrect"], "Age", "ambig", "bias_score")["value"], 1) == 49.0
    code, out, err = _cli(capsys, "score", "bbq", "--predictions", str(src), "--column",
                          "unifiedqa-t5-11b_pred_arc", "--unparsed", "drop")
    assert code == 2 and "unparsed" in err and len(err.strip().splitlines()) == 1


def test_cli_score_bbq_paper_targets_physical_appearance(tmp_path, capsys, shared_data):
    # the released predictions carry stale tags for 36 items; the paper's targets come from them
    src = shared_data / "bbq_reference_predictions" / "UnifiedQA" / "preds_Physical_appearance.jsonl"
    got = {}
    for meta, no_target in (("official", "keep"), ("file", "exclude")):
        code, out, err = _cli(capsys, "score", "bbq", "--predictions", str(src), "--column",
                              "unifiedqa-t5-11b_pred_arc", "--unparsed", "exclude", "--metadata", meta,
                              "--no-target", no_target, "--out", str(tmp_path / f"{meta}.json"))
        assert code == 0, err
        got[meta] = json.loads((tmp_path / f"{meta}.json").read_text())
    assert round(100 * _metric(got["official"], "Physical_appearance", "disambig", "bias_score")["value"], 1) == 0.3
    assert round(100 * _metric(got["file"], "Physical_appearance", "disambig", "bias_score")["value"], 1) == -1.8
    assert got["file"]["counts"]["n_no_target_items"] == 4


@pytest.mark.slow
def test_smollm2_bbq_small_subset(smollm2, tmp_path):
    bench = BBQ(categories=["Age", "Gender_identity"], limit=10, mode="loglik")
    m = run_benchmark(bench, EvalContext(backend=smollm2), RunStore(tmp_path), show_progress=False)
    recs = RunStore(tmp_path).load_results()
    assert len(recs) == 20
    # a real model scores the grammatical options far above random log-probs and is deterministic
    again = run_benchmark(bench, EvalContext(backend=smollm2), RunStore(tmp_path / "again"), show_progress=False)
    assert again["rows"] == m["rows"]
    assert all(max(r["scores"]) > -40 for r in recs)


@pytest.mark.parametrize("bench", ["crows-pairs", "stereoset", "holistic-bias", "occupation-gender"])
def test_method_on_a_benchmark_that_cannot_take_one_is_one_line(bench, capsys, tmp_path):
    code, out, err = _cli(capsys, "eval", bench, "--model", "no-such-model-dir", "--method", "reprompting",
                          "--out", str(tmp_path / "r"), "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"benchmark {bench!r} cannot run through inference-time method 'reprompting'" in err
    assert "bbq" in err and "b-score" in err
    assert not (tmp_path / "r").exists()  # refused before any model load or run folder
