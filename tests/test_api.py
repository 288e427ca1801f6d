"""The public Python API, used as a notebook would: only ``import fairdistill as fd``."""
from __future__ import annotations

import json

import pytest


def test_notebook_style_evaluate_compare_report(tiny_llama_chat_path, bbq_dir, tmp_path):
    import fairdistill as fd

    opts = {"categories": "Age", "limit": 4, "mode": "generate", "condition": "ambig", "max_new_tokens": 2,
            "data": str(bbq_dir)}
    plain = fd.evaluate("bbq", model=str(tiny_llama_chat_path), options=opts, out=tmp_path / "plain", dtype="float32")
    assert isinstance(plain, fd.Run) and plain.benchmark == "bbq"
    rows = plain.rows
    assert rows and all({"metric", "value", "ci_low", "ci_high", "n"} <= set(r) for r in rows)
    assert {r["metric"] for r in rows} >= {"accuracy", "bias_score", "stereotyped_rate"}
    assert len(plain.results()) == 4 and json.loads((tmp_path / "plain" / "config.json").read_text())
    debiased = fd.evaluate("bbq", model=str(tiny_llama_chat_path), method="prefix-3",
                           method_options={"attribute": "auto"}, options=opts, out=tmp_path / "prefix3", dtype="float32")
    comp = fd.compare(plain, debiased)
    assert any(r["run"] == "difference" and r["metric"] == "stereotyped_rate" for r in comp.rows)
    assert (tmp_path / "prefix3" / "comparison.json").exists()
    html = fd.report([plain, debiased], out=tmp_path / "r.html", labels=["plain", "prefix-3"])
    assert html.exists() and "prefix-3" in html.read_text()
    import fairdistill.compare  # noqa: F401  (importing the submodules leaves the API functions in place)
    import fairdistill.report  # noqa: F401

    assert fd.report([plain.path], out=tmp_path / "again.html").exists()
    assert fd.compare(plain, debiased, write=False).rows == comp.rows
    again = fd.evaluate("bbq", model=str(tiny_llama_chat_path), options=opts, out=tmp_path / "plain", dtype="float32")
    assert again.rows == rows  # a finished run resumes with nothing recomputed
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(fd.UserError, match="pip install pandas"):
            plain.to_pandas()
    else:
        assert len(plain.to_pandas()) == len(rows)


def test_api_errors_are_user_errors_before_any_model_loads(tmp_path):
    import fairdistill as fd

    with pytest.raises(fd.UserError, match="unknown benchmark|no-such"):
        fd.evaluate("no-such-benchmark", model="/nonexistent/model")
    with pytest.raises(fd.UserError, match="limit"):
        fd.evaluate("bbq", model="/nonexistent/model", options={"limit": -3})
    with pytest.raises(fd.UserError, match="not a finished run folder"):
        fd.Run.open(tmp_path)


def test_run_study_from_a_dict(tiny_gpt2_path, bbq_dir, tmp_path):
    import fairdistill as fd

    html = fd.run_study({"name": "api", "device": "cpu", "dtype": "float32",
                         "models": [{"name": "tiny", "model": str(tiny_gpt2_path)}],
                         "benchmarks": [{"name": "bbq", "options": {"categories": ["Age"], "limit": 2, "mode": "loglik",
                                                                     "data": str(bbq_dir)}}]},
                        out=tmp_path / "study")
    assert html.exists() and (tmp_path / "study" / "study.yaml").exists()
