"""`fairdistill run study.yaml` end to end on a tiny model: evaluate, train, evaluate again, report."""
import json
import shutil
from pathlib import Path

import pytest

from fairdistill.errors import UserError
from fairdistill.study import load_study, run_study

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_study_tiny_end_to_end(tiny_gpt2_path, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from fairdistill.distill import fairdistill as fd

    monkeypatch.setattr(fd, "JOURNAL_SECONDS", 0.0)  # a progress line per training step
    cfg = tmp_path / "study_tiny.yaml"
    shutil.copy(EXAMPLES / "study_tiny.yaml", cfg)
    (tmp_path / "tiny-gpt2").symlink_to(tiny_gpt2_path, target_is_directory=True)
    report = run_study(cfg, out=tmp_path / "out", show_progress=False)
    log = (tmp_path / "out" / "study.log").read_text()
    assert " training fairdistill: step 1/" in log and "s per step" in log  # without progress bars too
    assert report == tmp_path / "out" / "report.html" and report.exists()
    assert (tmp_path / "out" / "report.md").exists()
    study = json.loads((tmp_path / "out" / "study.json").read_text())
    assert [(r["model"], r["benchmark"]) for r in study["runs"]] == [
        ("base", "bbq"), ("base", "capability"), ("fairdistill", "bbq"), ("fairdistill", "capability")]
    for r in study["runs"]:
        assert (Path(r["dir"]) / "metrics.json").exists()
    # a capability run whose answers pile onto one letter says so in study.log as soon as it finishes
    warned = {r["model"]: (json.loads((Path(r["dir"]) / "metrics.json").read_text())["position"]["warning"])
              for r in study["runs"] if r["benchmark"] == "capability"}
    for model, warning in warned.items():
        assert (f" warn  capability on {model}: {warning}" in log) is bool(warning)
    assert any(warned.values())  # the random tiny GPT-2 favours one letter on its 4 questions
    # the trained model is a real model folder, evaluated after training
    trained = Path(study["models"]["fairdistill"])
    assert (trained / "config.json").exists() and study["trained"] == ["fairdistill"]
    cfg_after = json.loads((tmp_path / "out" / "fairdistill" / "bbq" / "config.json").read_text())
    assert cfg_after["model_spec"] == str(trained)
    html = report.read_text()
    assert "Capability retention" in html and "Δ fairdistill − base" in html and "<svg" in html
    # `fairdistill report STUDY_DIR` renders every run of the study
    from fairdistill.report import build_report

    again = build_report([str(tmp_path / "out")], str(tmp_path / "again.html"))
    assert again.read_text().count("<h3>") >= html.count("<h3>") - 1
    # ... and from the command line keeps the study's title unless told otherwise
    from typer.testing import CliRunner

    from fairdistill.cli import app

    title = load_study(cfg)[0].report.title
    assert title != "fairdistill report" and study["title"] == title
    res = CliRunner().invoke(app, ["report", str(tmp_path / "out"), "--out", str(tmp_path / "cli.html")])
    assert res.exit_code == 0, res.output
    assert f"<title>{title}" in (tmp_path / "cli.html").read_text()
    # rerunning resumes: nothing is retrained or re-evaluated
    mtime = (trained / "config.json").stat().st_mtime
    run_study(cfg, out=tmp_path / "out", show_progress=False)
    assert (trained / "config.json").stat().st_mtime == mtime


def test_example_study_configs_parse():
    for name in ("study.yaml", "study_tiny.yaml", "multilingual_study.yaml"):
        cfg, _ = load_study(EXAMPLES / name)
        assert cfg.models and (cfg.benchmarks or cfg.capability)


def test_study_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [{name: a, model: x}]\nbenchmarks: [{name: bbq}]\nbenchmark_typo: 1\n")
    with pytest.raises(UserError, match="benchmark_typo"):
        load_study(bad)
    bad.write_text("models: []\n")
    with pytest.raises(UserError, match="models"):
        load_study(bad)
    bad.write_text("models: [{name: a, model: x}, {name: a, model: y}]\n")
    with pytest.raises(UserError, match="unique"):
        load_study(bad)
    with pytest.raises(UserError, match="not found"):
        load_study(tmp_path / "missing.yaml")
    ok = tmp_path / "ok.yaml"
    ok.write_text("models: [{name: a, model: x}]\nbenchmarks: [{name: bbq, options: {no_such_option: 1}}]\n")
    with pytest.raises(UserError):
        run_study(ok, out=tmp_path / "o", show_progress=False)


def test_lora_adapter_output_is_merged_for_evaluation(tiny_gpt2_path, tmp_path):
    """A training step that leaves only a LoRA adapter (self-distillation) is merged into a model folder."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from fairdistill.backends.hf import HFBackend
    from fairdistill.study import _Study

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_path)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "train" / "adapter")
    merged = _Study._trained_dir({}, tmp_path / "train", str(tiny_gpt2_path))
    assert Path(merged) == (tmp_path / "train" / "merged").resolve()
    be = HFBackend.from_spec(merged, device="cpu")
    base = HFBackend.from_spec(str(tiny_gpt2_path), device="cpu")
    a = be.loglikelihood_choices([("The nurse said", [" he", " she"])])[0]
    b = base.loglikelihood_choices([("The nurse said", [" he", " she"])])[0]
    assert a != b  # the adapter's (random, non-zero) update is in the merged weights
    with pytest.raises(UserError, match="no model folder"):
        _Study._trained_dir({}, tmp_path / "empty", str(tiny_gpt2_path))


def test_the_qwen_study_file_is_valid_before_any_model_loads():
    """examples/qwen_study.yaml (the long Qwen evidence run): every benchmark option, method name and
    training option is one the code knows, so the study cannot fail hours in on a typo."""
    import dataclasses

    from fairdistill.distill.fairdistill import FairDistillConfig
    from fairdistill.distill.self_distill import SelfDistillConfig
    from fairdistill.registry import METHODS
    from fairdistill.runner import build_benchmark
    from fairdistill.study import load_study

    cfg, _ = load_study(Path(__file__).resolve().parents[1] / "examples" / "qwen_study.yaml")
    assert cfg.cache and {m.model for m in cfg.models} == {"qwen2.5-coder-1.5b"}
    keys = {b.key for b in cfg.benchmarks}
    for b in cfg.benchmarks:
        build_benchmark(b.name, b.options, seed=cfg.seed)
    for m in cfg.methods:
        METHODS.get(m.name)
        assert set(m.benchmarks) <= keys
    known = {"fairdistill": {f.name for f in dataclasses.fields(FairDistillConfig)} | {"student", "rules", "data"},
             "self_distill": {f.name for f in dataclasses.fields(SelfDistillConfig)} | {"method", "prompts", "fallback"}}
    for t in cfg.training:
        assert set(t.options) <= known[t.kind], (t.name, set(t.options) - known[t.kind])


TWO_RUNS = """
name: two
seed: 0
device: cpu
dtype: float32
models:
  - {name: base, model: MODEL, num_cpus: 1}
benchmarks:
  - {name: bbq, id: bbq-age, options: {categories: [Age], limit: 20, mode: loglik}}
  - {name: bbq, id: bbq-religion, options: {categories: [Religion], limit: 20, mode: loglik}}
"""


def run_on_local_ray(cfg, out, num_cpus: int, **env: str) -> None:
    """The study on a local Ray instance whose workers import fairdistill from where this process does."""
    ray = pytest.importorskip("ray")
    src = str(Path(__import__("fairdistill").__file__).resolve().parents[1])
    ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": src, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}})
    try:
        run_study(cfg, out=out, show_progress=False, executor="ray")
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_executor_makes_the_same_run_folders(tiny_gpt2_path, tmp_path):
    """A 2-run study as two Ray tasks on a local Ray instance (2 CPUs) equals the in-process study."""
    pytest.importorskip("ray")
    cfg = tmp_path / "two.yaml"
    cfg.write_text(TWO_RUNS.replace("MODEL", str(tiny_gpt2_path)))
    run_study(cfg, out=tmp_path / "local", show_progress=False)
    run_on_local_ray(cfg, tmp_path / "ray", 2)
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(tmp_path / "local") == files(tmp_path / "ray")
    for run in ("base/bbq-age", "base/bbq-religion"):
        a, b = tmp_path / "local" / run, tmp_path / "ray" / run
        assert (a / "results.jsonl").read_text() == (b / "results.jsonl").read_text()
        assert len((a / "results.jsonl").read_text().splitlines()) == 20
        assert json.loads((a / "metrics.json").read_text())["rows"] == json.loads((b / "metrics.json").read_text())["rows"]
        ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
        assert ca["identity"] == cb["identity"] and ca["label"] == cb["label"] == "base"
    sa, sb = (json.loads((tmp_path / d / "study.json").read_text())["runs"] for d in ("local", "ray"))
    strip = lambda runs, d: [{**r, "dir": str(Path(r["dir"]).relative_to(tmp_path / d))} for r in runs]  # noqa: E731
    assert strip(sa, "local") == strip(sb, "ray") and len(sa) == 2


def test_unknown_executor_and_missing_ray_are_one_line(tmp_path, monkeypatch):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(TWO_RUNS.replace("MODEL", "x"))
    with pytest.raises(UserError, match="unknown executor"):
        run_study(cfg, out=tmp_path / "o", show_progress=False, executor="dask")
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if not installed
    with pytest.raises(UserError, match=r"fairdistill\[ray\]"):
        run_study(cfg, out=tmp_path / "o", show_progress=False, executor="ray")


def test_backend_options_reach_every_model_of_the_study(tiny_gpt2_path, tmp_path):
    """`backend_options` of the study apply to every model (trained ones too), a model's own override them,
    and self-distillation evaluates with the base model's options (so its calls hit the study's cache)."""
    from fairdistill.study import StudyConfig, _Study

    cfg = StudyConfig(dtype="bfloat16", device="cpu", backend_options={"rescore_margin": 0.5},
                      models=[{"name": "a", "model": str(tiny_gpt2_path), "backend_options": {"rescore_margin": 0}},
                              {"name": "b", "model": str(tiny_gpt2_path)}])
    study = _Study(cfg, tmp_path, tmp_path / "out", False)
    study.models["trained"] = str(tiny_gpt2_path)
    margins = {}
    for name in ("a", "b", "trained"):
        be = study.load_backend(name)
        margins[name] = be.rescore_margin
        be.close()
    assert margins == {"a": 0.0, "b": 0.5, "trained": 0.5}
    from fairdistill.distill.self_distill import SelfDistillConfig

    assert SelfDistillConfig.from_kwargs(backend_options={"rescore_margin": 0}).backend_options == {"rescore_margin": 0}


def test_a_finished_training_whose_merged_model_is_gone_is_merged_again_not_retrained(tiny_gpt2_path, tmp_path):
    """A study folder carried to a fresh machine keeps adapters, not the large merged models."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from fairdistill.study import _Study

    cfg_path = tmp_path / "s.yaml"
    cfg_path.write_text(f"models: [{{name: base, model: {tiny_gpt2_path}}}]\nbenchmarks: [{{name: bbq}}]\n"
                        "training: [{name: sd, kind: self_distill, base: base, options: {method: reprompting}}]\n")
    cfg, cfg_dir = load_study(cfg_path)
    st = _Study(cfg, cfg_dir, tmp_path / "out", show_progress=False)
    train_dir = tmp_path / "out" / "train" / "sd"
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_path)
    peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["c_attn"])).save_pretrained(train_dir / "adapter")
    gone = tmp_path / "elsewhere" / "merged"
    (train_dir / "study_trained.json").write_text(json.dumps(
        {"model_dir": str(gone), "kind": "self_distill", "base": "base", "summary": {"global_step": 7}}))
    model_dir = st.train(cfg.training[0])
    assert Path(model_dir) == (train_dir / "merged").resolve() and (Path(model_dir) / "config.json").exists()
    assert json.loads((train_dir / "study_trained.json").read_text())["model_dir"] == model_dir
    assert st.costs["sd"]["steps"] == 7  # the recorded training summary is kept, not redone
    # recorded inside the training folder (e.g. train/<name>/student): merged again at that very path,
    # so the trained model keeps its identity and its response cache
    (train_dir / "study_trained.json").write_text(json.dumps(
        {"model_dir": str((train_dir / "student").resolve()), "kind": "self_distill", "base": "base", "summary": {}}))
    st = _Study(cfg, cfg_dir, tmp_path / "out", show_progress=False)
    assert Path(st.train(cfg.training[0])) == (train_dir / "student").resolve()
    assert (train_dir / "student" / "config.json").exists()


def _shrunk_qwen_study(path: Path, chat_model: str, panel_model: str, data: Path,
                      source: str = "qwen_study.yaml") -> Path:
    """examples/qwen_study.yaml with every model swapped for a tiny one and every size cut to a few
    items: the same benchmarks, methods, trainings and report, in a couple of minutes."""
    import yaml

    cfg = yaml.safe_load((EXAMPLES / source).read_text())
    cfg["models"] = [{**m, "model": chat_model} for m in cfg["models"]]
    for b in cfg["benchmarks"]:
        o = b.setdefault("options", {})
        if b["name"] == "bbq":
            o.update(categories=["Age", "Gender_identity"], limit=2 if o["limit"] == 50 else 1, max_new_tokens=2)
        elif b["name"] in ("cbbq", "kobbq"):
            o.update(categories=["age", "religion"], limit=2 if o["limit"] > 20 else 1, max_new_tokens=2)
        elif b["name"] == "holistic-bias":
            o["sample"] = 40
    if cfg.get("capability"):
        cfg["capability"].update(subjects=cfg["capability"]["subjects"][:2], limit=2)
    small = {"explanation": {"explain_tokens": 4}, "intent-aware": {"cot_tokens": 4, "feedback_tokens": 4, "max_rounds": 1},
             "adjudication": {"panel": f"{chat_model},{panel_model}", "judge_tokens": 2}}
    for m in cfg["methods"]:
        m["options"] = {**m.get("options", {}), **small.get(m["name"], {})}
    for t in cfg.get("training", []):
        if t["kind"] == "fairdistill":
            t["options"].update(max_steps=2)
        else:  # a random tiny model's answers rarely parse: the teacher is a test double that always says "A"
            t["options"].update(limit=3, epochs=1, method="always-a")  # (under rotation "A" would be a tie)
            t["options"].pop("permute")
        if "data" in t["options"]:
            t["options"]["data"] = t["options"]["data"].replace("${data}", str(data))
    cfg["out"] = str(path.parent / "out")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.slow
def test_the_qwen_study_shape_runs_end_to_end_on_tiny_models(tiny_llama_chat_path, shared_data, tmp_path, monkeypatch):
    """Everything the long Qwen study does (each method on its benchmarks, four FairDistillation students,
    the self-distilled student with its held-out and transfer runs, capability, the report) on tiny
    random models, so that the real run cannot fail hours in on a step no test has taken."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("peft")
    from fairdistill.methods.base import Method, MethodResult
    from fairdistill.registry import METHODS

    class AlwaysA(Method):
        name = "always-a"

        def answer(self, questions, gen=None):
            return [MethodResult(text="A", transcript=[{"role": "assistant", "content": "A"}], calls=2)
                    for _ in questions]

    METHODS.names()  # the shipped methods are registered; the double joins them for this test only
    monkeypatch.setitem(METHODS._items, "always-a", AlwaysA)
    cfg = _shrunk_qwen_study(tmp_path / "qwen_study.yaml", str(tiny_llama_chat_path), str(tiny_llama_chat_path),
                             shared_data)
    report = run_study(cfg, show_progress=False)
    study = json.loads((tmp_path / "out" / "study.json").read_text())
    for r in study["runs"]:
        assert (Path(r["dir"]) / "metrics.json").exists(), r
    methods = {r["method"] for r in study["runs"] if r["model"] == "qwen15"}
    assert methods == {None, "reprompting", "explanation", "intent-aware", "adjudication",
                       *(f"prefix-{i}" for i in range(1, 7))}
    assert set(study["trained"]) == {"qwen15-fd-he-she", "qwen15-fd-gender", "qwen15-fd-published-objective",
                                     "qwen15-fd-no-rule", "qwen15-fairdistill-he-she", "qwen15-fd-he-she-lr3e-4",
                                     "qwen15-self-distilled"}
    fd = json.loads((tmp_path / "out" / "train" / "qwen15-fd-he-she" / "fairdistill.json").read_text())
    assert fd["examples"] == 310  # the built-in occupations corpus, held-out occupations left out
    sd = json.loads((tmp_path / "out" / "train" / "qwen15-self-distilled" / "study_trained.json").read_text())
    assert sd["summary"]["transfer"]  # the untrained model and the student on the occupation probe
    for name in study["trained"]:  # every trained model gets the plain evaluation, capability included
        assert {r["benchmark"] for r in study["runs"] if r["model"] == name} >= {
            "bbq-ambig", "bbq-disambig", "occupation", "occupation-pronouns", "holistic-gender", "capability"}
        # and is compared item by item with the model it was trained from wherever the benchmark pairs units
        for bench in ("bbq-ambig", "occupation-pronouns"):
            comp = json.loads((tmp_path / "out" / name / bench / "comparison.json").read_text())
            assert Path(comp["runs"]["baseline"]["dir"]) == tmp_path / "out" / "qwen15" / bench
            assert comp["n_matched"] == (10 if bench == "occupation-pronouns" else 4)
        assert not (tmp_path / "out" / name / "occupation" / "comparison.json").exists()  # no paired units
    # each method run is paired against the plain run of the same items
    for r in study["runs"]:
        if r["method"]:
            assert (Path(r["dir"]) / "comparison.json").exists(), r["dir"]
    html = report.read_text()
    assert "Capability retention" in html and "self-distilled" in html and "reprompting" in html
    # the published direction beside this model's (the study file's report.references), and what the
    # method runs said (transcripts, HTML only: they quote items)
    assert "Beside published results" in html and "Gallegos et al. 2025" in html
    assert "6.0 calls, " in html and "per item (plain: 3.0 calls)" in html  # reprompting's cost, 3 rotations
    assert html.count('class="transcript"') >= 2 and "Remove bias from your answer" in html
    assert "Beside published results" in (tmp_path / "out" / "report.md").read_text()
    assert "(answer parsed:" in html and "(answer parsed:" not in (tmp_path / "out" / "report.md").read_text()
    # study.log: a timestamped start and done line per run and training, written by the process doing it
    log = (tmp_path / "out" / "study.log").read_text().splitlines()
    assert sum(" done  " in line for line in log) == len(study["runs"]) - sum(
        r["benchmark"] is None for r in study["runs"]) + len(study["trained"])
    assert any("done  bbq-ambig on qwen15 in" in line and "items)" in line for line in log)


def test_the_multilingual_study_shape_runs_end_to_end_on_tiny_models(tiny_llama_chat_path, shared_data, tmp_path):
    """examples/multilingual_study.yaml on a tiny chat model: BBQ, CBBQ and KoBBQ side by side, reprompting
    with native and English instructions in separate run folders, each paired against its plain run."""
    cfg = _shrunk_qwen_study(tmp_path / "ml.yaml", str(tiny_llama_chat_path), "", shared_data,
                             source="multilingual_study.yaml")
    report = run_study(cfg, show_progress=False)
    study = json.loads((tmp_path / "out" / "study.json").read_text())
    dirs = {Path(r["dir"]).name for r in study["runs"]}
    assert {"cbbq-20--reprompting-native", "cbbq-20--reprompting-en", "kobbq-20--reprompting-native",
            "kobbq-20--reprompting-en"} <= dirs
    for d in ("cbbq-20--reprompting-native", "kobbq-20--reprompting-en"):
        assert (tmp_path / "out" / "qwen15" / d / "comparison.json").exists()
    native = json.loads((tmp_path / "out" / "qwen15" / "cbbq-20--reprompting-native" / "config.json").read_text())
    assert native["identity"]["method"]["language"] == "native" and native["identity"]["method"]["instructions_language"] == "zh"
    en = json.loads((tmp_path / "out" / "qwen15" / "cbbq-20--reprompting-en" / "config.json").read_text())
    assert en["identity"]["method"]["prompts"]["reprompt"].startswith("Remove bias")
    html = report.read_text()
    assert "Across languages" in html and "qwen15 + reprompting-en" in html


def test_two_studies_naming_one_cache_folder_ask_the_model_once(tiny_gpt2_path, tmp_path):
    """`cache: FOLDER` puts the per-model response caches there: a second study of the same model on
    the same items (a different study folder) is answered from the first one's cache."""
    import sqlite3

    spec = ("models: [{{name: base, model: {m}}}]\ndevice: cpu\ndtype: float32\ncache: {c}\n"
            "benchmarks: [{{name: bbq, options: {{categories: [Age], limit: 3, mode: loglik}}}}]\n")
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(spec.format(m=tiny_gpt2_path, c=tmp_path / "shared-cache"))
    run_study(tmp_path / "a.yaml", out=tmp_path / "a", show_progress=False)
    db = tmp_path / "shared-cache" / "base" / "responses.sqlite"
    n = sqlite3.connect(db).execute("select count(*) from responses").fetchone()[0]
    assert n > 0 and not (tmp_path / "a" / "base" / "responses.sqlite").exists()
    run_study(tmp_path / "b.yaml", out=tmp_path / "b", show_progress=False)
    meta = json.loads((tmp_path / "b" / "base" / "bbq" / "metrics.json").read_text())["meta"]
    assert meta["cache_misses_this_session"] == 0 and meta["cache_hits_this_session"] > 0
    assert sqlite3.connect(db).execute("select count(*) from responses").fetchone()[0] == n


def test_the_self_distillation_teacher_is_chosen_by_the_rule_from_the_method_comparisons(tmp_path):
    """method: auto picks the method with the lowest paired s_AMB difference whose 95% CI lies below 0;
    a larger drop whose CI includes 0 does not win; with no qualifying method the fallback is the teacher."""
    from fairdistill.study import _Study, load_study

    cfg_file = tmp_path / "s.yaml"
    cfg_file.write_text("""
name: t
models: [{name: m, model: x}]
benchmarks:
  - {id: bbq-ambig, name: bbq, options: {mode: generate, condition: ambig}}
  - {id: bbq-disambig, name: bbq, options: {mode: generate, condition: disambig}}
methods:
  - {name: reprompting}
  - {name: prefix-1, options: {attribute: auto}}
  - {name: prefix-2}
  - {name: explanation}
""")
    cfg, cfg_dir = load_study(cfg_file)
    st = _Study(cfg, cfg_dir, tmp_path / "out", show_progress=False)

    def comp(method: str, bench: str, value: float, lo: float, hi: float) -> None:
        d = tmp_path / "out" / "m" / f"{bench}--{method}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "comparison.json").write_text(json.dumps({"rows": [
            {"condition": "ambig", "metric": "s_AMB", "run": "difference", "value": value, "ci_low": lo,
             "ci_high": hi, "p_value": 0.01, "n": 350}]}))

    comp("reprompting", "bbq-ambig", +0.114, 0.013, 0.223)    # raises the bias
    comp("prefix-1", "bbq-ambig", -0.078, -0.145, -0.014)     # lowers it, CI below 0
    # a method still running when the teacher is chosen: refused, naming it, rather than left out
    with pytest.raises(UserError, match=r"not yet compared: prefix-2 on bbq-ambig, explanation on bbq-ambig"):
        st.choose_teacher("m")
    comp("prefix-2", "bbq-ambig", -0.052, -0.119, 0.020)      # lowers it, CI includes 0
    comp("explanation", "bbq-ambig", -0.200, -0.450, 0.050)   # the largest drop, CI includes 0: not chosen
    comp("explanation", "bbq-disambig", -0.900, -0.950, -0.850)  # disambiguated items do not count
    c = st.choose_teacher("m")
    assert c["method"] == "prefix-1" and c["options"] == {"attribute": "auto"}
    assert "-0.078" in c["reason"] and len(c["candidates"]) == 4
    comp("prefix-1", "bbq-ambig", -0.078, -0.145, +0.004)     # its CI now includes 0: nothing qualifies
    c = st.choose_teacher("m", fallback="prefix-2")
    assert c["method"] == "prefix-2" and "fallback" in c["reason"]


PRIORITY = """
name: priority
seed: 0
device: cpu
dtype: float32
models: [{name: base, model: MODEL}]
benchmarks: [{name: bbq, id: bbq-age, options: {categories: [Age], limit: 4, mode: loglik, condition: ambig}}]
interventions: [{name: sentence-debias, options: {max_pairs: 40}}]
training:
  - {name: cda, kind: cda, base: base, options: {data: winobias, max_examples: 8, max_length: 32, batch_size: 4,
                                                  max_steps: 1, progress: false, device: cpu}}
"""


@pytest.mark.slow
def test_ray_executor_runs_trained_models_before_interventions(tiny_gpt2_path, tmp_path, monkeypatch):
    """On one Ray CPU the order is the executor's priority: the training, the plain run, the trained model's
    run as soon as it exists, the (possibly expensive) intervention last; study.json keeps the in-process order."""
    pytest.importorskip("ray")
    monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "p.yaml"
    cfg.write_text(PRIORITY.replace("MODEL", str(tiny_gpt2_path)))
    run_study(cfg, out=tmp_path / "local", show_progress=False)
    run_on_local_ray(cfg, tmp_path / "ray", 1, FAIRDISTILL_CACHE=str(tmp_path / "cache-ray"))
    starts = [ln.split(" start ", 1)[1] for ln in (tmp_path / "ray" / "study.log").read_text().splitlines()
              if " start " in ln]
    assert starts == ["training cda (cda) from base", "bbq-age on base", "bbq-age on cda",
                      "bbq-age on base + sentence-debias", "bbq-age on cda + sentence-debias"], starts
    sa, sb = (json.loads((tmp_path / d / "study.json").read_text())["runs"] for d in ("local", "ray"))
    strip = lambda runs, d: [{**r, "dir": str(Path(r["dir"]).relative_to(tmp_path / d))} for r in runs]  # noqa: E731
    assert strip(sa, "local") == strip(sb, "ray")
    assert [(r["model"], r["intervention"]) for r in sb] == [("base", None), ("base", "sentence-debias"), ("cda", None),
                                                             ("cda", "sentence-debias")]
    # the trained model's run was compared with its base's item by item, though it finished first
    assert (tmp_path / "ray" / "cda" / "bbq-age" / "comparison.json").exists()


def test_auto_dtype_resumes_with_the_dtype_of_the_finished_runs(tiny_gpt2_path, tmp_path, monkeypatch):
    """A study begun where `dtype: auto` meant bfloat16 and resumed on a CPU without native bf16 goes on in
    bfloat16 (its finished runs are reused, not redone and replaced in float32), and says so in study.log."""
    from fairdistill.backends import hf

    monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "s.yaml"
    cfg.write_text(TWO_RUNS.replace("MODEL", str(tiny_gpt2_path)).replace("dtype: float32", "dtype: auto"))
    monkeypatch.setattr(hf, "native_bf16", lambda device: True)
    run_study(cfg, out=tmp_path / "out", show_progress=False)
    dtype = lambda: json.loads((tmp_path / "out" / "base" / "bbq-age" / "config.json").read_text())["identity"]["model"]["dtype"]  # noqa: E731
    assert dtype() == "bfloat16"
    for f in (tmp_path / "out").rglob("results.jsonl"):  # a fresh checkout: configs and metrics, no results
        f.unlink()
    # an intervention's run computed in its own dtype (self-debias: float32) does not count, sorted first or not
    other = tmp_path / "out" / "base" / "a-self-debias"  # sorts before bbq-age
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"identity": {"model": {"dtype": "float32",
                                                                          "intervention": {"name": "self-debias"}}}}))
    monkeypatch.setattr(hf, "native_bf16", lambda device: False)
    run_study(cfg, out=tmp_path / "out", show_progress=False)
    assert dtype() == "bfloat16"
    log = (tmp_path / "out" / "study.log").read_text()
    note = "base: dtype auto stays bfloat16, as in base/bbq-age (this machine would pick float32: no native bf16"
    assert log.count(note) == 1
    for f in (tmp_path / "out").rglob("results.jsonl"):  # the same resume on Ray: one note, from the driver
        f.unlink()
    run_on_local_ray(cfg, tmp_path / "out", 2, FAIRDISTILL_CACHE=str(tmp_path / "cache"))
    assert dtype() == "bfloat16" and (tmp_path / "out" / "study.log").read_text().count(note) == 2
    # a new study folder on this machine: float32
    run_study(cfg, out=tmp_path / "fresh", show_progress=False)
    cfg_new = json.loads((tmp_path / "fresh" / "base" / "bbq-age" / "config.json").read_text())
    assert cfg_new["identity"]["model"]["dtype"] == "float32"


def test_select_runs_part_of_a_study_and_keeps_the_rest_in_its_report(tiny_gpt2_path, tmp_path, monkeypatch):
    """--select: only the runs whose label or folder matches (and the trainings they need); each invocation's
    study.json and report hold every finished run of the folder, in the study's order."""
    monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "s.yaml"
    # the intervention for the base model only: selecting it needs no training
    cfg.write_text(PRIORITY.replace("MODEL", str(tiny_gpt2_path)).replace("{max_pairs: 40}}", "{max_pairs: 40}, models: [base]}"))
    out = tmp_path / "out"
    runs = lambda: [(r["model"], r["intervention"]) for r in json.loads((out / "study.json").read_text())["runs"]]  # noqa: E731

    run_study(cfg, out=out, show_progress=False, select=["base/*--sentence-debias"])  # a folder pattern
    # the intervention's run with the plain run it is compared with; no training needed
    assert runs() == [("base", None), ("base", "sentence-debias")] and not (out / "train").exists()
    assert (out / "base" / "bbq-age--sentence-debias" / "comparison.json").exists()
    run_study(cfg, out=out, show_progress=False, select=["base + sentence-debias"])  # a label: the same runs
    assert runs() == [("base", None), ("base", "sentence-debias")]
    run_study(cfg, out=out, show_progress=False, select=["cda"])  # the trained model's runs need its training
    assert runs() == [("base", None), ("base", "sentence-debias"), ("cda", None)]
    assert (out / "cda" / "bbq-age" / "comparison.json").exists()  # compared with its base, run earlier
    report = (out / "report.html").read_text()
    assert "base + sentence-debias" in report and "cda" in report
    with pytest.raises(UserError, match="no run of .* matches"):
        run_study(cfg, out=out, show_progress=False, select=["qwen*"])
    # without --select the whole study is done (here: nothing left but the record), same order
    run_study(cfg, out=out, show_progress=False)
    assert runs() == [("base", None), ("base", "sentence-debias"), ("cda", None)]


def _shrunk_confirmatory_study(path: Path, chat_model: str, fallback: str | None) -> Path:
    """examples/confirmatory_study.yaml on a tiny model: the same benchmarks, candidates, rule, explicit split,
    training, transfer and report, on a few of the pre-registered items (the first ones of two categories)."""
    import yaml

    text = (EXAMPLES / "confirmatory_study.yaml").read_text().replace("${config_dir}/../evidence/confirmatory/items",
                                                                         str(path.parent / "items"))
    (path.parent / "items").mkdir()
    for f in sorted((EXAMPLES.parent / "evidence" / "confirmatory" / "items").glob("*.txt")):
        ids = f.read_text().split()
        cats = list(dict.fromkeys(i.rsplit("-", 1)[0] if f.name.startswith("bbq") else i.split("-")[0] for i in ids))
        keep = [i for c in cats[:2] for i in [x for x in ids if x.startswith(c + "-")][:2]]
        (path.parent / "items" / f.name).write_text("\n".join(keep) + "\n")
    cfg = yaml.safe_load(text)
    cfg["models"] = [{**m, "model": chat_model} for m in cfg["models"]]
    for b in cfg["benchmarks"]:
        b["options"]["max_new_tokens"] = 2
    cfg["capability"].update(subjects=cfg["capability"]["subjects"][:1], limit=2)
    small = {"explanation": {"explain_tokens": 4}, "intent-aware": {"cot_tokens": 4, "feedback_tokens": 4, "max_rounds": 1}}
    for m in cfg["methods"]:
        m["options"] = {**m.get("options", {}), **small.get(m["name"], {})}
    for t in cfg["training"]:
        t["options"].update(epochs=1, max_new_tokens=2, fallback=None)
        t["options"].pop("fallback")
        t["options"]["teacher_rule"]["fallback"] = fallback
        for tr in t["options"]["transfer"]:
            if isinstance(tr, dict) and tr["name"] == "kobbq":
                tr["options"].update(limit=1, categories=["age"], max_new_tokens=2)
    cfg["out"] = str(path.parent / "out")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.mark.slow
def test_the_confirmatory_study_shape_runs_end_to_end_on_tiny_models(tiny_llama_chat_path, shared_data, tmp_path,
                                                                    monkeypatch):
    """The pre-registered study on a tiny random model: every candidate on the training split, the rule applied
    to their comparisons. The random model lowers nothing, so no teacher qualifies and no student is trained
    (said in teacher_choice.json and study.log); with a fallback teacher registered instead, the student is trained
    on exactly the training ids and judged on the held-out ids, with transfer runs."""
    pytest.importorskip("peft")
    pytest.importorskip("lm_eval")
    cfg = _shrunk_confirmatory_study(tmp_path / "c.yaml", str(tiny_llama_chat_path), None)
    run_study(cfg, show_progress=False)
    out = tmp_path / "out"
    for name in ("qwen15-sd-bbq", "qwen15-sd-cbbq"):
        choice = json.loads((out / "train" / name / "teacher_choice.json").read_text())
        assert choice["method"] is None and "no teacher, no student" in choice["reason"]
        assert len(choice["candidates"]) == (5 if name.endswith("bbq") and "cbbq" not in name else 8)
        assert not (out / "train" / name / "study_trained.json").exists()
    log = (out / "study.log").read_text()
    assert "no teacher for qwen15-sd-bbq" in log and "no teacher for qwen15-sd-cbbq" in log
    study = json.loads((out / "study.json").read_text())
    assert study["trained"] == [] and any("no student trained" in n for n in study["notes"])
    comp = json.loads((out / "qwen15" / "bbq-train-ambig--prefix-3" / "comparison.json").read_text())
    assert {r["metric"] for r in comp["rows"]} >= {"stereotyped_rate", "anti_stereotyped_rate", "accuracy", "s_AMB"}

    # the same study with a fallback teacher (a test double: a random tiny model's answers never parse, and
    # "A" in every rotation would be a tie, so unrotated): the explicit split drives training and held-out runs
    import yaml

    from fairdistill.methods.base import Method, MethodResult
    from fairdistill.registry import METHODS

    class AlwaysA(Method):
        name = "always-a"

        def answer(self, questions, gen=None):
            return [MethodResult(text="A", transcript=[{"role": "assistant", "content": "A"}], calls=2)
                    for _ in questions]

    METHODS.names()
    monkeypatch.setitem(METHODS._items, "always-a", AlwaysA)
    cfg2 = tmp_path / "second" / "c.yaml"
    cfg2.parent.mkdir()
    _shrunk_confirmatory_study(cfg2, str(tiny_llama_chat_path), "always-a")
    st_cfg = yaml.safe_load(cfg2.read_text())
    st_cfg["out"] = str(out)  # the finished runs are reused
    st_cfg["training"] = st_cfg["training"][:1]
    st_cfg["training"][0]["options"].pop("permute")
    cfg2.write_text(yaml.safe_dump(st_cfg, sort_keys=False))
    run_study(cfg2, show_progress=False)
    sd = json.loads((out / "train" / "qwen15-sd-bbq" / "study_trained.json").read_text())["summary"]
    items = lambda *names: {i for n in names for i in (cfg2.parent / "items" / n).read_text().split()}  # noqa: E731
    held = items("bbq-heldout-ambig.txt", "bbq-heldout-disambig.txt")
    train = items("bbq-train-ambig.txt", "bbq-train-disambig.txt")
    assert sd["n_heldout"] == len(held) and sd["n_train"] == len(train)
    sft = {json.loads(x)["id"] for x in (out / "train" / "qwen15-sd-bbq" / "sft.jsonl").read_text().splitlines()}
    assert sft <= train and not sft & held
    student = {json.loads(x)["id"] for c in ("ambig", "disambig")
               for x in (out / "train" / "qwen15-sd-bbq" / "heldout" / c / "student" / "results.jsonl").open()}
    assert student == held
    assert set(sd["transfer"]) == {"kobbq", "occupation-gender"}
    assert json.loads((out / "train" / "qwen15-sd-bbq" / "teacher_choice.json").read_text())["method"] == "always-a"


def test_study_option_doctor_writes_its_verdicts_into_study_log(tiny_llama_chat_path, tmp_path):
    cfg = tmp_path / "d.yaml"
    cfg.write_text(TWO_RUNS.replace("MODEL", str(tiny_llama_chat_path)).replace("name: two", "name: two\ndoctor: true")
                   .replace("limit: 20", "limit: 2"))
    run_study(cfg, out=tmp_path / "out", show_progress=False)
    log = (tmp_path / "out" / "study.log").read_text()
    for check in ("capabilities", "chat template", "parseable answers", "speed"):
        assert f"doctor base: {check}: " in log
    assert (tmp_path / "out" / "base" / "doctor.json").exists()
    run_study(cfg, out=tmp_path / "out", show_progress=False)  # once per study folder
    assert (tmp_path / "out" / "study.log").read_text().count("doctor base: capabilities") == 1
