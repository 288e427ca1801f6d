"""The mitigation comparison: a tiny study with every intervention and CDA next to FairDistillation, the
report's side-by-side table with CIs and costs, and examples/baselines_study.yaml checked before any run."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from fairdistill.study import load_study, run_study

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

TINY = """
name: tiny-baselines
seed: 0
device: cpu
dtype: float32
models:
  - {name: base, model: "%(gpt2)s"}
  - {name: other, model: "%(llama)s"}
benchmarks:
  - {name: crows-pairs, options: {limit: 6}}
  - {id: bbq-ambig, name: bbq, options: {categories: [Age], limit: 3, mode: loglik, condition: ambig}}
capability: {tasks: [mmlu], subjects: [anatomy], limit: 3}
interventions:
  - {name: self-debias, options: {bias_types: gender}, models: [base]}
  - {name: sentence-debias, options: {max_pairs: 60}, models: [base]}
  - {name: inlp, options: {max_pairs: 60, iterations: 2}, models: [base], benchmarks: [crows-pairs]}
training:
  - name: base-cda
    kind: cda
    base: base
    options: {data: winobias, max_examples: 16, max_length: 32, batch_size: 4, max_steps: 2, progress: false, device: cpu}
  - name: base-fairdistill
    kind: fairdistill
    base: base
    options: {rules: he_she, student: lora, data: "${data}/winobias/pro_stereotyped_type1.txt.dev", max_examples: 16,
              max_length: 32, batch_size: 4, max_steps: 2, progress: false, device: cpu}
"""


def test_tiny_baselines_study(tiny_gpt2_path, tiny_llama_chat_path, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "cache"))
    cfg = tmp_path / "study.yaml"
    cfg.write_text(TINY % {"gpt2": tiny_gpt2_path, "llama": tiny_llama_chat_path})
    out = tmp_path / "out"
    run_study(cfg, out=out, show_progress=False, only=["base"])
    study = json.loads((out / "study.json").read_text())
    runs = {(r["model"], r["benchmark"], r["intervention"]) for r in study["runs"]}
    for iv in ("self-debias", "sentence-debias"):
        for bench in ("crows-pairs", "bbq-ambig", "capability"):
            assert ("base", bench, iv) in runs
    assert ("base", "crows-pairs", "inlp") in runs and ("base", "bbq-ambig", "inlp") not in runs
    assert ("base-cda", "crows-pairs", None) in runs and ("base-fairdistill", "capability", None) in runs
    assert not any(m == "other" for m, _, _ in runs)
    # interventions are compared item by item with the plain model where the benchmark can be
    assert (out / "base" / "bbq-ambig--self-debias" / "comparison.json").exists()
    # capability too: question by question, with McNemar's test of the accuracy
    comp = json.loads((out / "base" / "capability--self-debias" / "comparison.json").read_text())
    assert comp["benchmark"] == "capability" and "mcnemar" in json.dumps(comp["tests"]).lower()
    assert (out / "base-fairdistill" / "capability" / "comparison.json").exists()  # against its base
    # the projections' estimates are kept in the study folder, beside the model's response cache
    assert {p.name.split("-")[0] for p in (out / "base" / "interventions").glob("*.npz")} == {"sentence", "inlp"}
    assert not (out / "base" / "crows-pairs--self-debias" / "comparison.json").exists()
    cda_cfg = json.loads((out / "base-cda" / "crows-pairs" / "config.json").read_text())
    assert cda_cfg["cost"] == {"training": "cda", "base": "base", "steps": 2, "train_seconds": cda_cfg["cost"]["train_seconds"]}

    # the other model later, into the same folder: the report keeps both
    report = run_study(cfg, out=out, show_progress=False, only=["other"])
    study = json.loads((out / "study.json").read_text())
    assert {r["model"] for r in study["runs"]} == {"base", "base-cda", "base-fairdistill", "other"}
    html = report.read_text()
    table = html[html.index('id="sec-mitigations"'):]
    table = table[: table.index("</table>")]
    lines = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    labels = [re.sub(r"<[^>]+>", "", ln.split("</td>")[0]).strip() for ln in lines[1:]]
    assert labels == ["base", "base + self-debias", "base + sentence-debias", "base + inlp", "other", "base-cda",
                      "base-fairdistill"]
    head = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", lines[0]))
    for col in ("CrowS-Pairs gender", "CrowS-Pairs overall", "BBQ ambiguous s_AMB", "MMLU accuracy", "cost"):
        assert col in head
    row = dict(zip(labels, lines[1:]))
    assert "+1 forward pass per token" in row["base + self-debias"]
    assert "no extra forward pass; estimated once on 120 sentences" in row["base + sentence-debias"]
    assert "cda: 2 steps" in row["base-cda"] and "fairdistill: 2 steps" in row["base-fairdistill"]
    assert re.search(r"\d+\.\d+ \[\d+\.\d+, \d+\.\d+\]", row["base"])  # values with their CI
    assert "—" in row["base + inlp"]  # inlp ran on CrowS-Pairs only
    md = report.with_suffix(".md").read_text()
    assert "**Mitigations side by side**" in md and "| base + self-debias |" in md


def test_run_refuses_an_unknown_model_name(capsys, tmp_path):
    from fairdistill.cli import main

    assert main(["run", str(EXAMPLES / "baselines_study.yaml"), "--models", "smollm2,qwen", "--out", str(tmp_path)]) == 2
    assert "no model named qwen; models: smollm2, qwen15, qwen15-fp32" in capsys.readouterr().err


def test_the_baselines_study_file_is_valid_before_any_model_loads():
    """Every benchmark option, intervention option and training option of examples/baselines_study.yaml is
    one the code knows, so the long runs cannot fail hours in on a typo."""
    from fairdistill.distill.cda import CDAConfig
    from fairdistill.distill.fairdistill import FairDistillConfig
    from fairdistill.distill.self_distill import SelfDistillConfig
    from fairdistill.interventions import get_intervention
    from fairdistill.runner import build_benchmark

    cfg, _ = load_study(EXAMPLES / "baselines_study.yaml")
    assert [m.model for m in cfg.models] == ["smollm2", "qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b"]
    assert next(m for m in cfg.models if m.name == "qwen15-fp32").dtype == "float32"
    for b in cfg.benchmarks:
        build_benchmark(b.name, b.options, seed=cfg.seed)
    assert {iv.name for iv in cfg.interventions} == {"self-debias", "sentence-debias", "inlp"}
    for iv in cfg.interventions:
        get_intervention(iv.name, **iv.options)
        assert set(iv.models) in ({"smollm2", "qwen15"}, {"smollm2", "qwen15-fp32"})
    known = {"fairdistill": {f.name for f in dataclasses.fields(FairDistillConfig)} | {"student", "rules", "data"},
             "cda": {f.name for f in dataclasses.fields(CDAConfig)} | {"student", "data"},
             "self_distill": {f.name for f in dataclasses.fields(SelfDistillConfig)} | {"method", "prompts"}}
    for t in cfg.training:
        assert set(t.options) <= known[t.kind], (t.name, set(t.options) - known[t.kind])
    # CDA and FairDistillation share corpus and budget on each base model
    for base in ("smollm2", "qwen15-fp32"):
        cda = next(t.options for t in cfg.training if t.kind == "cda" and t.base == base)
        fd = next(t.options for t in cfg.training if t.kind == "fairdistill" and t.base == base)
        for k in ("data", "max_steps", "batch_size", "learning_rate", "student"):
            assert cda[k] == fd[k], (base, k)
