"""fairdistill doctor: verdicts on a tiny in-process model (bf16 against float32 included), a server whose
log-probs fail the canary, and agreement with a reference backend."""
from __future__ import annotations

import json

import pytest

from fairdistill.backends.openai import _CANARY_VERDICTS
from fairdistill.cli import main
from fairdistill.doctor import diagnose, probe_items


def _by_name(rep):
    return {c.name: c for c in rep.checks}


def test_probe_items_are_balanced_and_complete():
    items = probe_items()
    assert len(items) == 20 and len({it["id"] for it in items}) == 20
    gold = [sum(it["label"] == k for it in items) for k in range(3)]
    assert min(gold) >= 6  # no letter is the right answer far more often than another
    assert all(it[f"ans{i}"] for it in items for i in range(3))


def test_doctor_on_a_tiny_bf16_model_and_its_reference(tiny_llama_chat_path):
    from fairdistill.backends.hf import HFBackend

    half = HFBackend.from_spec(str(tiny_llama_chat_path), device="cpu", dtype="bfloat16")
    full = HFBackend.from_spec(str(tiny_llama_chat_path), device="cpu", dtype="float32")
    rep = diagnose(half, reference=full)
    c = _by_name(rep)
    assert c["chat template"].verdict == "ok" and c["log-prob canary"].verdict == "n/a"
    assert c["parseable answers"].value.endswith("/20")
    assert c["bf16 vs float32"].verdict in ("ok", "warn", "fail") and c["bf16 vs float32"].value.endswith("/20")
    same = int(c["agrees with reference"].value.split("/")[0])
    assert same == sum(a == b for a, b in zip(rep.answers, diagnose(full).answers))  # counted from the answers
    assert len(rep.disagreements) == min(5, 20 - same)
    assert "questions/s" in c["speed"].value and "peak RSS" in c["speed"].note
    # bf16 against float32 and the reference (the same model in float32) measure the same thing here
    assert c["bf16 vs float32"].value == c["agrees with reference"].value


@pytest.mark.slow
def test_doctor_cli_flags_a_server_with_broken_logprobs(smollm2, tmp_path, capsys):
    from servers.echo_logprobs import EchoLogprobServer

    from test_logprob_canary import Shifted

    _CANARY_VERDICTS.clear()
    with Shifted(smollm2.model, smollm2.tokenizer, name="m") as srv:
        rc = main(["doctor", f"openai:{srv.url}#m", "--backend-option", "chat=false", "--out", str(tmp_path / "d.json")])
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "d.json").read_text())
    checks = {c["name"]: c for c in rep["checks"]}
    assert rc == 1 and not rep["ok"]
    assert checks["log-prob canary"]["verdict"] == "fail" and "misaligned" in checks["log-prob canary"]["note"]
    assert "log-prob canary" in out and "fail" in out
    _CANARY_VERDICTS.clear()
    with EchoLogprobServer(smollm2.model, smollm2.tokenizer, name="m") as srv:
        main(["doctor", f"openai:{srv.url}#m", "--backend-option", "chat=false", "--out", str(tmp_path / "ok.json")])
    checks = {c["name"]: c for c in json.loads((tmp_path / "ok.json").read_text())["checks"]}
    assert checks["log-prob canary"]["verdict"] == "ok"
    _CANARY_VERDICTS.clear()


def test_a_server_that_dies_is_a_failed_check_not_a_crash():
    """A server that stops answering mid-check (llama-cpp-python's server segfaulted on this machine's CPU) gives
    failed verdicts naming the error."""
    import socket

    from fairdistill.backends.base import load_backend

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    be = load_backend(f"openai:http://127.0.0.1:{port}/v1#m", backoff_base=0.01, max_retries=1, startup_retries=0)
    rep = diagnose(be)
    c = _by_name(rep)
    assert c["log-prob canary"].verdict == "fail" and "cannot reach" in c["log-prob canary"].note
    assert c["answers"].verdict == "fail" and "cannot reach" in c["answers"].note and not rep.ok
