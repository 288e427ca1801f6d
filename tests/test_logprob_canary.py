"""The log-probability canary: an OpenAI-compatible server whose echoed prompt log-probs are wrong is refused
before it scores anything, in one line naming the failed check and its numbers. Fake servers reproduce the two
known bugs (llama-cpp-python #1983: log-probs of the next position; llama.cpp #27174: the generated token only)
and the measured symptom of the first (every token near -10); a correct server passes, at one request."""
from __future__ import annotations

import pytest

from fairdistill.backends.base import load_backend
from fairdistill.backends.openai import CANARY_PROMPT, _CANARY_VERDICTS, canary_failure
from fairdistill.errors import CapabilityError

from servers.echo_logprobs import EchoLogprobServer


class Shifted(EchoLogprobServer):
    """llama-cpp-python #1983: each token_logprobs (and top_logprobs) entry belongs to the next position."""

    def complete(self, body):
        out = super().complete(body)
        lp = out["choices"][0]["logprobs"]
        lp["token_logprobs"] = lp["token_logprobs"][1:] + [None]
        lp["top_logprobs"] = lp["top_logprobs"][1:] + [None]
        return out


class GeneratedOnly(EchoLogprobServer):
    """llama.cpp #27174 (llama-server): log-probs for the generated token only."""

    def complete(self, body):
        out = super().complete(body)
        lp = out["choices"][0]["logprobs"]
        for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            lp[k] = lp[k][-1:]
        return out


class Flat(EchoLogprobServer):
    """The symptom measured on llama-cpp-python's server: every echoed token near -10, whatever the text."""

    def complete(self, body):
        out = super().complete(body)
        lp = out["choices"][0]["logprobs"]
        lp["token_logprobs"] = [None] + [-10.0 - 0.1 * (k % 7) for k in range(1, len(lp["tokens"]))]
        lp["top_logprobs"] = [None] + [{t: v} for t, v in zip(lp["tokens"][1:], lp["token_logprobs"][1:])]
        return out


@pytest.fixture(autouse=True)
def fresh_verdicts():
    _CANARY_VERDICTS.clear()
    yield
    _CANARY_VERDICTS.clear()


def _backend(srv, **opts):
    return load_backend(f"openai:{srv.url}#m", **opts)


def _counting(srv):
    n = {"requests": 0}
    inner = srv.complete

    def complete(body):
        n["requests"] += 1
        return inner(body)

    srv.complete = complete
    return n


@pytest.mark.slow
def test_a_correct_server_with_a_real_model_passes_at_one_request(smollm2):
    with EchoLogprobServer(smollm2.model, smollm2.tokenizer, name="m") as srv:
        n = _counting(srv)
        be = _backend(srv)
        assert be.can_score and n["requests"] == 1
        again = _backend(srv)  # a second backend on the same URL and model: the verdict is kept
        assert again.can_score and n["requests"] == 1
        reqs = [("The capital of France is", [" Paris", " Berlin"])]
        assert be.loglikelihood_choices(reqs)[0] == pytest.approx(smollm2.loglikelihood_choices(reqs)[0], abs=1e-3)
        assert n["requests"] <= 1 + 2


@pytest.mark.slow
@pytest.mark.parametrize("server, check", [(Shifted, "misaligned"), (GeneratedOnly, "generated token only"),
                                           (Flat, "implausible")])
def test_broken_servers_are_refused_in_one_line(smollm2, server, check):
    with server(smollm2.model, smollm2.tokenizer, name="m") as srv:
        be = _backend(srv)
        with pytest.raises(CapabilityError) as e:
            be.loglikelihood_choices([("The capital of France is", [" Paris", " Berlin"])])
        msg = str(e.value)
        assert check in msg and "--mode generate" in msg and "trust_logprobs=true" in msg and "\n" not in msg
        assert not be.can_score  # a benchmark in auto mode then uses generation mode
        with pytest.raises(CapabilityError, match=check):  # what a benchmark's require(score=True) says
            be.require(score=True, what="BBQ log-likelihood mode")
        trusted = _backend(srv, trust_logprobs="true")  # the user's explicit override
        if server is not GeneratedOnly:  # with no prompt scores there is nothing to trust
            assert trusted.can_score


@pytest.mark.slow
def test_the_cli_refuses_a_broken_server_in_one_line(smollm2, bbq_dir, tmp_path, capsys):
    from fairdistill.cli import main

    with Shifted(smollm2.model, smollm2.tokenizer, name="m") as srv:
        rc = main(["eval", "bbq", "--model", f"openai:{srv.url}#m", "--mode", "loglik", "--categories", "Age",
                   "--limit", "2", "--data", str(bbq_dir), "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "misaligned" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_canary_checks_by_hand():
    toks = [str(c) for c in CANARY_PROMPT] + [" 2"]
    good = {"choices": [{"logprobs": {"tokens": toks, "token_logprobs": [None] + [-0.1] * (len(toks) - 1),
                                      "top_logprobs": [None] + [{t: -0.1} for t in toks[1:]]}}],
            "usage": {"prompt_tokens": len(toks) - 1}}
    assert canary_failure(good, CANARY_PROMPT) is None
    low = {**good, "choices": [{"logprobs": {**good["choices"][0]["logprobs"],
                                             "token_logprobs": [None] + [-3.0] * (len(toks) - 1), "top_logprobs": None}}]}
    assert "implausible" in canary_failure(low, CANARY_PROMPT) and "-3.00" in canary_failure(low, CANARY_PROMPT)
    wrong_text = {**good, "choices": [{"logprobs": {**good["choices"][0]["logprobs"], "tokens": ["x"] * len(toks)}}]}
    assert "do not spell the prompt" in canary_failure(wrong_text, CANARY_PROMPT)
    assert canary_failure({"choices": [{"logprobs": None}]}, CANARY_PROMPT) is None  # no log-probs: said elsewhere
