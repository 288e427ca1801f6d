"""The OpenAI-compatible HTTP backend against a real server on loopback.

The server is ``transformers serve`` (transformers 5.x, extra ``serving``) serving the real
SmolLM2-135M-Instruct directory offline. It answers chat completions and ignores ``echo`` /
``logprobs``, so it is also the real server on which the missing-capability error is tested.
Fault tests: the server is SIGKILLed mid-run and restarted, and a loopback proxy answers 429 then
500 before passing through.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import pytest

from fairdistill.backends.base import Backend, GenerationRequest, GenerationResult, load_backend
from fairdistill.errors import CapabilityError, UserError

from servers.fault_proxy import FaultProxy
from servers.transformers_serve import TransformersServe, free_port, missing_reason

SECRET = "sk-test-7c1f0e-DO-NOT-LOG"
CONVERSATION = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Name a fruit that is yellow."},
    {"role": "assistant", "content": "A banana."},
    {"role": "user", "content": "And one that is red?"},
]


def _bbq(**kw):
    from fairdistill.benchmarks.bbq import BBQ

    return BBQ(categories=["Age", "Gender_identity"], limit=3, mode="generate", max_new_tokens=8, **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2):
    reason = missing_reason()
    if reason:
        pytest.skip(f"transformers serve unavailable: {reason}")
    from fairdistill.backends.builtin import resolve_builtin

    log = tmp_path_factory.mktemp("server") / "transformers-serve.log"
    srv = TransformersServe(resolve_builtin("smollm2"), log_path=log).start()
    yield srv
    srv.stop()


def http_backend(url: str, model: str, **opts):
    return load_backend(f"openai:{url}#{model}", **opts)


@pytest.fixture(scope="module")
def bbq_inprocess(smollm2, bbq_dir):
    """BBQ generation-mode records of the in-process model (the reference)."""
    from fairdistill.benchmarks.base import EvalContext

    bench = _bbq(data=str(bbq_dir))
    items = bench.items()
    return {r["id"]: r for r in bench.evaluate(items, EvalContext(backend=smollm2))}


@pytest.mark.slow
def test_bbq_generation_over_http_equals_in_process(server, bbq_dir, bbq_inprocess):
    from fairdistill.benchmarks.base import EvalContext

    backend = http_backend(server.url, server.model_dir, device="cpu", batch_size=4)  # in-process options ignored
    bench = _bbq(data=str(bbq_dir))
    ctx = EvalContext(backend=backend)
    assert bench.resolved_mode(ctx) == "generate"  # no prompt log-probs on this server
    records = bench.evaluate(bench.items(), ctx)
    assert len(records) == len(bbq_inprocess) == 6
    for r in records:
        ref = bbq_inprocess[r["id"]]
        assert r["final_text"] == ref["final_text"], r["id"]
        assert (r["pred"], r["status"]) == (ref["pred"], ref["status"])
    assert any(r["final_text"] for r in records)


@pytest.mark.slow
def test_reprompting_method_over_http_equals_in_process(server, smollm2, bbq_dir):
    """A two-call method runs through the HTTP backend turn for turn as it does in-process."""
    from fairdistill.benchmarks.base import EvalContext
    from fairdistill.methods.base import get_method

    bench = _bbq(data=str(bbq_dir), condition="ambig")
    items = bench.items()
    runs = {}
    for name, be in (("http", http_backend(server.url, server.model_dir)), ("local", smollm2)):
        runs[name] = {r["id"]: r for r in bench.evaluate(items, EvalContext(backend=be, method=get_method("reprompting", be)))}
    assert len(runs["http"]) == len(items) >= 2
    for k, r in runs["http"].items():
        ref = runs["local"][k]
        assert r["calls"] == 2 and [m["role"] for m in r["transcript"]] == ["user", "assistant", "user", "assistant"]
        assert r["transcript"] == ref["transcript"], k
        assert (r["pred"], r["status"]) == (ref["pred"], ref["status"])


@pytest.mark.slow
def test_multi_turn_conversation_over_http_equals_in_process(server, smollm2):
    backend = http_backend(server.url, server.model_dir)
    reqs = [GenerationRequest(messages=CONVERSATION, max_new_tokens=20),
            GenerationRequest(messages=CONVERSATION[1:2], max_new_tokens=12, stop=["."])]
    got = backend.generate(reqs)
    want = smollm2.generate(reqs)
    assert [g.text for g in got] == [w.text for w in want]
    assert got[0].text and "." not in got[1].text
    assert got[0].prompt_tokens > 0 and got[0].completion_tokens > 0


@pytest.mark.slow
def test_missing_prompt_logprobs_is_one_clear_error(server):
    backend = http_backend(server.url, server.model_dir)
    assert backend.can_score is False
    with pytest.raises(CapabilityError) as e:
        backend.loglikelihood_choices([("The sky is", [" blue", " green"])])
    msg = str(e.value)
    assert "does not return prompt log-probabilities" in msg and server.url in msg and "\n" not in msg
    with pytest.raises(CapabilityError):
        backend.sequence_logprob(["hello"])
    from fairdistill.benchmarks.base import EvalContext

    from fairdistill.benchmarks.bbq import BBQ

    with pytest.raises(CapabilityError, match="log-likelihoods"):
        BBQ(mode="loglik").check(EvalContext(backend=backend))


def test_endpoint_down_is_one_clear_error():
    port = free_port()  # nothing listens there
    backend = http_backend(f"http://127.0.0.1:{port}/v1", "m", backoff_base=0.05)
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        backend.generate([GenerationRequest(messages=[{"role": "user", "content": "hi"}])])
    assert str(e.value).startswith(f"cannot reach http://127.0.0.1:{port}/v1: connection refused")
    assert time.monotonic() - t0 < 10  # a server never reached fails fast


def test_retries_give_up_with_one_line_and_retry_after_parsing():
    from email.utils import formatdate

    from fairdistill.backends.openai import _parse_retry_after

    with FaultProxy("http://127.0.0.1:9", retry_after="0") as proxy:  # faults answer before forwarding
        proxy.faults = [503, 503, 503]
        backend = http_backend(proxy.url, "m", max_retries=2, backoff_base=0.01)
        with pytest.raises(UserError) as e:
            backend.generate([GenerationRequest(messages=[{"role": "user", "content": "hi"}])])
    assert str(e.value) == f"{proxy.url} kept failing: HTTP 503 injected 503 (3 attempts)"
    assert _parse_retry_after("2.5") == 2.5 and _parse_retry_after(None) is None
    assert 25 < _parse_retry_after(formatdate(time.time() + 30, usegmt=True)) <= 30


def test_model_string_errors():
    with pytest.raises(UserError, match="names no model"):
        load_backend("openai:http://127.0.0.1:1/v1")
    with pytest.raises(UserError, match="not an http"):
        load_backend("openai:127.0.0.1:1#m")
    assert load_backend("openai:http://127.0.0.1:1#m").base_url == "http://127.0.0.1:1/v1"


def test_vllm_missing_extra_is_one_clear_error():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here; this test checks the error shown without it")
    with pytest.raises(UserError, match=r"vllm is not installed: pip install 'fairdistill\[vllm\]'"):
        load_backend("vllm:/some/model", tensor_parallel_size=2)


@pytest.mark.slow
def test_429_then_500_are_retried_and_key_is_sent_never_shown(server, smollm2, monkeypatch, caplog):
    monkeypatch.setenv("FD_TEST_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    upstream = server.url.rsplit("/v1", 1)[0]
    req = GenerationRequest(messages=[{"role": "user", "content": "Say hello."}], max_new_tokens=6)
    with FaultProxy(upstream, retry_after="0.3") as proxy:
        proxy.faults = [429, 500, 503]
        backend = http_backend(proxy.url, server.model_dir, api_key_env="FD_TEST_API_KEY",
                               backoff_base=0.05, concurrency=1)
        t0 = time.monotonic()
        (got,) = backend.generate([req])
        elapsed = time.monotonic() - t0
        # a 400 (wrong model name) is not retried: one line, the server's reason
        bad = http_backend(proxy.url, "no-such-model", api_key_env="FD_TEST_API_KEY")
        with pytest.raises(UserError, match="HTTP 400"):
            bad.generate([req])
    assert [e["status"] for e in proxy.log] == [429, 500, 503, 200, 400]
    assert elapsed >= 0.3  # Retry-After honoured
    assert backend.stats()["retries"] == 3
    assert got.text == smollm2.generate([req])[0].text
    assert all(e["auth"] == f"Bearer {SECRET}" for e in proxy.log)
    shown = " ".join([repr(backend), json.dumps(backend.describe()), str(vars(backend)), caplog.text])
    assert SECRET not in shown
    assert "retry 1/" in caplog.text  # retries are logged (without the key)


@pytest.mark.slow
def test_sync_api_works_inside_a_running_event_loop(server):
    backend = http_backend(server.url, server.model_dir)

    async def main():
        return backend.generate([GenerationRequest(messages=[{"role": "user", "content": "Hi"}], max_new_tokens=3)])

    (res,) = asyncio.run(main())
    assert isinstance(res, GenerationResult) and res.text


class _Counting(Backend):
    name = "counting"

    def __init__(self):
        self.calls: list[str] = []

    @property
    def can_chat(self):
        return True

    def describe(self):
        return {"backend": "counting", "model": "m"}

    def generate(self, requests):
        self.calls += [r.messages[-1]["content"] for r in requests]
        return [GenerationResult(text=f"{r.messages[-1]['content']}!{len(self.calls)}", completion_tokens=1)
                for r in requests]

    def loglikelihood_choices(self, requests):
        self.calls += [c for c, _ in requests]
        return [[-float(len(o)) for o in opts] for _, opts in requests]

    def sequence_logprob(self, texts):
        self.calls += list(texts)
        return [(-1.5, 3) for _ in texts]


def test_cache_answers_reruns_without_requerying(tmp_path):
    from fairdistill.backends.cache import CachingBackend

    def msgs(t):
        return [{"role": "user", "content": t}]

    inner = _Counting()
    cb = CachingBackend(inner, tmp_path / "cache.sqlite")
    greedy = [GenerationRequest(messages=msgs(t)) for t in ("a", "b", "a")]
    first = cb.generate(greedy)
    assert inner.calls == ["a", "b"]  # the repeated request is asked once
    assert first[0] == first[2]
    assert cb.generate(greedy) == first and inner.calls == ["a", "b"]
    # sampled without a seed: never cached; with a seed: cached
    sampled = [GenerationRequest(messages=msgs("s"), temperature=0.7)]
    cb.generate(sampled)
    cb.generate(sampled)
    seeded = [GenerationRequest(messages=msgs("t"), temperature=0.7, seed=3)]
    cb.generate(seeded)
    cb.generate(seeded)
    assert inner.calls == ["a", "b", "s", "s", "t"]
    assert cb.loglikelihood_choices([("ctx", [" x", " yy"])]) == [[-2.0, -3.0]]
    assert cb.sequence_logprob(["q"]) == [(-1.5, 3)]
    n = len(inner.calls)
    cb.close()
    # a resumed run (new process, same file) does not re-query; another model identity does
    inner2 = _Counting()
    cb2 = CachingBackend(inner2, tmp_path / "cache.sqlite")
    assert cb2.generate(greedy) == first
    assert cb2.loglikelihood_choices([("ctx", [" x", " yy"])]) == [[-2.0, -3.0]]
    assert cb2.sequence_logprob(["q"]) == [(-1.5, 3)]
    assert inner2.calls == [] and n == 7
    inner3 = _Counting()
    inner3.describe = lambda: {"backend": "counting", "model": "other"}  # type: ignore[method-assign]
    CachingBackend(inner3, tmp_path / "cache.sqlite").generate(greedy[:1])
    assert inner3.calls == ["a"]


@pytest.mark.slow
def test_server_killed_mid_run_and_restarted_every_item_answered_once(server, bbq_dir, bbq_inprocess, tmp_path):
    """SIGKILL the real server while a BBQ run is in flight, restart it on the same port: the run
    completes (retries wait for the server), and every item is stored exactly once."""
    from fairdistill.benchmarks.base import EvalContext
    from fairdistill.runner import run_benchmark
    from fairdistill.store import RunStore

    backend = http_backend(server.url, server.model_dir, max_retries=60, backoff_base=0.2, backoff_max=2.0,
                           concurrency=2)
    bench = _bbq(data=str(bbq_dir))
    bench.batch_size = bench.plain_batch_size = 2  # three batches: the kill lands between stored batches and inside one
    out = tmp_path / "run"
    results = out / "results.jsonl"
    events: list[str] = []

    def chaos():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if results.exists() and results.read_text().strip():
                break
            time.sleep(0.05)
        server.kill()
        events.append("killed")
        time.sleep(1.0)
        server.start()
        events.append("restarted")

    t = threading.Thread(target=chaos, daemon=True)
    t.start()
    metrics = run_benchmark(bench, EvalContext(backend=backend), RunStore(out), show_progress=False)
    t.join(240)
    assert events == ["killed", "restarted"]
    assert backend.stats()["retries"] > 0  # the run really saw the server go away
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines() if line.strip()]
    assert sorted(ids) == sorted(bbq_inprocess) and len(ids) == len(set(ids))  # each exactly once
    assert metrics["meta"]["n_items"] == 6
    for line in results.read_text().splitlines():
        r = json.loads(line)
        assert r["final_text"] == bbq_inprocess[r["id"]]["final_text"]


# -- the log-likelihood path (echo + logprobs), checked against in-process scores ----------------
# transformers serve does not return prompt log-probabilities, and vLLM / llama.cpp cannot run
# here, so tests/servers/echo_logprobs.py answers in vLLM's response format from the same weights.

LOGLIK_REQUESTS = [
    ("The nurse said that", [" he", " she", " they were late"]),
    ("Q: Who was the engineer?\nA: ", ["The man", "The woman", "Unknown"]),
    ("he she", [" him her his"]),
]


def _flat(rows):
    return [x for row in rows for x in row]


@pytest.mark.parametrize("prepend_bos", [False, True])
def test_http_loglikelihood_equals_in_process(tiny_gpt2, prepend_bos):
    from servers.echo_logprobs import EchoLogprobServer

    with EchoLogprobServer(tiny_gpt2.model, tiny_gpt2.tokenizer, name="gpt2", prepend_bos=prepend_bos) as srv:
        # a random model cannot predict a counting sequence: the canary refuses it, trust_logprobs overrides
        assert not http_backend(srv.url, "gpt2").can_score
        backend = http_backend(srv.url, "gpt2", concurrency=4, trust_logprobs="true")
        assert backend.can_score and backend.describe()["trust_logprobs"] is True
        assert backend.continuation_lengths(LOGLIK_REQUESTS) == tiny_gpt2.continuation_lengths(LOGLIK_REQUESTS)
        if not prepend_bos:  # same conditioning as the in-process backend
            got, want = backend.loglikelihood_choices(LOGLIK_REQUESTS), tiny_gpt2.loglikelihood_choices(LOGLIK_REQUESTS)
            assert _flat(got) == pytest.approx(_flat(want), abs=1e-4)
            # contexts without trailing whitespace: for "A: " the in-process backend conditions on
            # the space but scores the first token of " The" (reported to the lead)
            ctxs, cands = [c for c, _ in LOGLIK_REQUESTS if c == c.rstrip()], \
                [o for c, o in LOGLIK_REQUESTS if c == c.rstrip()]
            assert _flat(backend.next_token_logprobs(ctxs, cands)) == pytest.approx(
                _flat(tiny_gpt2.next_token_logprobs(ctxs, cands)), abs=1e-4)
        else:  # BOS first, as the in-process backend scores whole sequences
            texts = ["The nurse said that he was late.", "Unknown"]
            got_s, want_s = backend.sequence_logprob(texts), tiny_gpt2.sequence_logprob(texts)
            assert [n for _, n in got_s] == [n for _, n in want_s]
            assert [s for s, _ in got_s] == pytest.approx([s for s, _ in want_s], abs=1e-4)
