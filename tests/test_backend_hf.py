"""The HF backend's request kinds on tiny random models, checked against direct computations."""
import math

import pytest
import torch

from fairdistill.backends.base import GenerationRequest


def _direct_logprob(backend, context: str, continuation: str) -> float:
    ctx, cont = backend._encode_pair(context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logits = backend.model(ids).logits[0]
    lp = torch.log_softmax(logits, -1)
    return sum(float(lp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def test_loglikelihood_choices_equals_unbatched_forward(tiny_gpt2):
    reqs = [("The nurse said that", [" he", " she", " they went home"]),
            ("Who was not comfortable using the phone?", [" The grandfather", " The grandson", " Can't be determined"])]
    got = tiny_gpt2.loglikelihood_choices(reqs)
    for (ctx, conts), row in zip(reqs, got):
        for c, v in zip(conts, row):
            assert math.isclose(v, _direct_logprob(tiny_gpt2, ctx, c), rel_tol=1e-4, abs_tol=1e-4)


def test_trailing_space_moves_to_continuation(tiny_gpt2):
    a = tiny_gpt2.loglikelihood_choices([("Answer:", [" A"])])
    b = tiny_gpt2.loglikelihood_choices([("Answer: ", ["A"])])
    assert math.isclose(a[0][0], b[0][0], abs_tol=1e-5)


def test_sequence_logprob_causal_and_masked(tiny_gpt2, tiny_bert):
    (lp, n), = tiny_gpt2.sequence_logprob(["The doctor is here."])
    assert n == len(tiny_gpt2.tokenizer("The doctor is here.")["input_ids"]) and lp < 0
    (plp, pn), = tiny_bert.sequence_logprob(["the doctor is here."])
    assert pn == len(tiny_bert.tokenizer("the doctor is here.")["input_ids"]) - 2  # [CLS]/[SEP] not scored
    assert plp < 0


def test_generate_greedy_is_deterministic_and_batched(tiny_llama_chat):
    reqs = [GenerationRequest(messages=[{"role": "user", "content": q}], max_new_tokens=8)
            for q in ["Who was not comfortable?", "A or B?", "Answer with a single letter."]]
    one_by_one = [tiny_llama_chat.generate([r])[0].text for r in reqs]
    batched = [r.text for r in tiny_llama_chat.generate(reqs)]
    assert one_by_one == batched
    assert all(r.completion_tokens <= 8 for r in tiny_llama_chat.generate(reqs))


def test_capabilities(tiny_gpt2, tiny_llama_chat, tiny_bert):
    assert tiny_llama_chat.can_chat and not tiny_gpt2.can_chat and not tiny_bert.can_chat
    assert tiny_bert.model_type == "masked" and tiny_gpt2.model_type == "causal"


def test_masked_choice_scores_the_whole_continuation(tiny_bert):
    whole, pos = tiny_bert._masked_span("the man is", " a nurse")
    tok = tiny_bert.tokenizer
    assert tok.decode([whole[p] for p in pos]).replace(" ", "") == "anurse"
    assert whole[-1] == tok.sep_token_id and len(whole) - 1 not in pos
    (score,), = tiny_bert.loglikelihood_choices([("the man is", [" a nurse"])])
    (direct, n), = tiny_bert.pll_positions([whole], [pos])
    assert abs(score - direct) < 1e-5 and n == len(pos)


def test_next_token_logprobs_agree_with_choice_scores(tiny_gpt2):
    for ctx in ("The nurse said that", "Answer: "):
        nt = tiny_gpt2.next_token_logprobs([ctx], [["A", " B"]])[0]
        first_tokens = [tiny_gpt2._encode_pair(ctx, c)[1] for c in ("A", " B")]
        for c, v, ft in zip(("A", " B"), nt, first_tokens):
            if len(ft) == 1:
                (ll,), = tiny_gpt2.loglikelihood_choices([(ctx, [c])])
                assert abs(ll - v) < 1e-4


def test_bf16_with_fp32_rescoring_equals_fp32_on_rescored_items(tiny_gpt2_path, tiny_gpt2):
    """Items under the margin are re-scored with the checkpoint's float32 weights, swapped in module by
    module: they equal a float32 model's scores; items above it keep their bf16 scores."""
    import torch

    from fairdistill.backends.hf import HFBackend

    reqs = [("The nurse said that", [" he", " she", " they"]),
            ("Who was not comfortable using the phone?", [" The grandfather", " The grandson", " Unknown"]),
            ("The engineer said that", [" he", " she"])]
    fp32 = tiny_gpt2.loglikelihood_choices(reqs)
    every = HFBackend.from_spec(str(tiny_gpt2_path), device="cpu", dtype="bfloat16", rescore_margin=1e9)
    assert every.model.dtype == torch.bfloat16
    got = every.loglikelihood_choices(reqs)
    assert every.stats() == {"loglik_requests": 3, "rescored_fp32": 3, "first_token_fp32": 0, "regenerated": 0,
                             "first_token_margin": 0.1}
    for a, b in zip(got, fp32):
        assert a == pytest.approx(b, abs=1e-4)
    assert every.model.dtype == torch.bfloat16  # weights swapped back after the pass
    none = HFBackend.from_spec(str(tiny_gpt2_path), device="cpu", dtype="bfloat16", rescore_margin=0)
    plain = none.loglikelihood_choices(reqs)
    assert none.stats() == {} and plain != fp32  # pure bf16 differs somewhere
    assert every.describe()["fp32_rescore_margin"] == 1e9 and "fp32_rescore_margin" not in none.describe()


def test_half_precision_copy_is_written_once_and_loads_the_same_weights(tiny_gpt2_path, tmp_path):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from fairdistill.backends.builtin import half_precision_copy

    folder = tmp_path / "model"
    shutil.copytree(tiny_gpt2_path, folder)
    out = half_precision_copy(folder, torch.bfloat16)
    assert out == str(folder / "bfloat16") and (folder / "bfloat16" / "model.safetensors.index.json").exists()
    mtime = (folder / "bfloat16" / "config.json").stat().st_mtime_ns
    assert half_precision_copy(folder, torch.bfloat16) == out and (folder / "bfloat16" / "config.json").stat().st_mtime_ns == mtime
    a = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).state_dict()
    b = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_parallel_runs_write_the_half_precision_copy_once(tiny_gpt2_path, tmp_path, monkeypatch):
    """Two runs needing the same copy at once (Ray tasks): the second waits for the first's folder rather than
    writing over it or deleting it under a reader."""
    import shutil
    import threading
    import time

    import torch

    from fairdistill.backends import builtin

    folder = tmp_path / "model"
    shutil.copytree(tiny_gpt2_path, folder)
    calls, write = [], builtin._write_copy

    def slow_write(*a):
        calls.append(1)
        time.sleep(0.5)  # the other thread arrives while this one writes
        return write(*a)

    monkeypatch.setattr(builtin, "_write_copy", slow_write)
    outs: list[str] = []
    threads = [threading.Thread(target=lambda: outs.append(builtin.half_precision_copy(folder, torch.bfloat16)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and outs == [str(folder / "bfloat16")] * 2
    assert builtin._converted(folder / "bfloat16") and not list(folder.glob(".bfloat16.*.tmp"))


def test_auto_dtype_follows_native_bf16(monkeypatch):
    import torch

    from fairdistill.backends import hf

    monkeypatch.setattr(hf, "native_bf16", lambda device: True)
    assert hf._resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(hf, "native_bf16", lambda device: False)
    assert hf._resolve_dtype("auto", "cpu") == torch.float32
    assert hf._resolve_dtype("bf16", "cpu") == torch.bfloat16


def test_bf16_generation_decides_near_tied_first_tokens_in_fp32(tiny_llama_chat_path, tiny_llama_chat):
    """Greedy bf16 generation: a first token under the margin is taken from the float32 pass, the
    rest regenerated after it; with an infinite margin every first token equals float32's."""
    from fairdistill.backends.hf import HFBackend

    reqs = [GenerationRequest(messages=[{"role": "user", "content": f"Who was forgetful? Option {k}"}],
                              max_new_tokens=3) for k in range(6)]
    fp32 = tiny_llama_chat.generate(reqs)
    every = HFBackend.from_spec(str(tiny_llama_chat_path), device="cpu", dtype="bfloat16", rescore_margin=1e9,
                                first_token_margin=1e9)
    got = every.generate(reqs)
    st = every.stats()
    assert st["first_token_fp32"] == 6 and 0 <= st["regenerated"] <= 6
    # the first-token threshold is its own (default 0.1 nats), and off whenever re-scoring is off
    assert HFBackend(every.model, tok := every.tokenizer, rescore_margin=0.2)._first_margin() == 0.1
    assert HFBackend(every.model, tok, rescore_margin=0.0, first_token_margin=0.5)._first_margin() == 0.0
    pure = HFBackend(every.model, tok, rescore_margin=0.0, first_token_margin=1e9)
    pure.generate(reqs)
    assert pure.stats() == {}  # nothing checked in pure bf16
    tok = every.tokenizer
    first = lambda text: tok(text, add_special_tokens=False)["input_ids"][:1]  # noqa: E731
    assert [first(g.text) for g in got] == [first(f.text) for f in fp32]
    assert all(g.completion_tokens <= 3 for g in got)


def test_declared_capabilities_and_the_cache_covers_token_pll(tiny_bert, tiny_llama_chat, tiny_gpt2, tmp_path):
    from fairdistill.backends.base import Backend
    from fairdistill.backends.cache import CachingBackend
    from fairdistill.errors import CapabilityError

    assert tiny_bert.capabilities() == {"model_object", "token_pll"}
    assert {"chat_template", "chat_choice_logprobs"} <= tiny_llama_chat.capabilities()
    assert "chat_template" not in tiny_gpt2.capabilities()  # no chat template in its tokenizer
    with pytest.raises(CapabilityError):
        Backend().pll_positions([[1]], [[0]])
    cached = CachingBackend(tiny_bert, tmp_path / "c.sqlite")
    assert cached.capabilities() == tiny_bert.capabilities() and cached.tokenizer is tiny_bert.tokenizer
    ids = tiny_bert.tokenizer("the doctor is here.")["input_ids"]
    first = cached.pll_positions([ids], [[1, 2]])
    again = cached.pll_positions([ids], [[1, 2]])
    assert first == again == tiny_bert.pll_positions([ids], [[1, 2]]) and cached.hits == 1


def test_shared_prompt_prefixes_are_computed_once_with_the_same_answers(tiny_llama_chat_path, bbq_dir):
    """Rows that share a long prompt prefix (one BBQ question in its three option orders) are grouped,
    their prefix computed once; greedy answers, and float32 first-token decisions, equal the unshared ones."""
    from fairdistill.backends.hf import HFBackend, shared_prefix_groups
    from fairdistill.benchmarks.bbq import BBQ, mc_question
    from fairdistill.methods.base import user_turn

    items = BBQ(categories="Age", limit=3, condition="ambig", data=str(bbq_dir)).load_items()
    reqs = [GenerationRequest(messages=[{"role": "user", "content": user_turn(mc_question(it, o))}], max_new_tokens=6)
            for it in items for o in ([0, 1, 2], [1, 2, 0], [2, 0, 1])]
    reqs.append(GenerationRequest(messages=[{"role": "user", "content": "An unrelated short prompt"}], max_new_tokens=6))
    be = HFBackend.from_spec(str(tiny_llama_chat_path), device="cpu", dtype="float32")
    encs = [be.tokenizer(be.apply_chat_template(r.messages), add_special_tokens=False)["input_ids"] for r in reqs]
    group, lens = shared_prefix_groups(encs)
    assert group == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    for g in range(3):  # the shared part is a real common prefix, and ends before the options differ
        rows = [encs[r] for r in range(9) if group[r] == g]
        assert lens[g] >= 32 and all(e[:lens[g]] == rows[0][:lens[g]] for e in rows)
        assert len({tuple(e[lens[g]:lens[g] + 1]) for e in rows}) > 1
    assert shared_prefix_groups([encs[0], encs[-1]]) is None
    shared = [(x.text, x.completion_tokens) for x in be.generate(reqs)]
    be.share_prefixes = False
    plain = [(x.text, x.completion_tokens) for x in be.generate(reqs)]
    assert shared == plain
    # bf16 with every first token decided in float32: the float32 pass shares prefixes too
    half = HFBackend.from_spec(str(tiny_llama_chat_path), device="cpu", dtype="bfloat16", rescore_margin=1e9,
                               first_token_margin=1e9)
    want = [int(lp.argmax()) for lp in be._last_logits(encs, [0] * len(encs))]
    first = lambda texts: [half.tokenizer(t, add_special_tokens=False)["input_ids"][:1] for t in texts]  # noqa: E731
    got = half.generate(reqs)
    assert half.stats()["first_token_fp32"] == len(reqs)
    assert first([g.text for g in got]) == first([t for t, _ in plain])
    with half._fp32_weights().active():
        assert half._last_token_argmax(encs) == want


def test_a_run_rebuilt_from_the_cache_keeps_the_timing_of_the_session_that_computed_it(tiny_gpt2, tiny_gpt2_path,
                                                                                        bbq_dir, tmp_path):
    """results.jsonl lost (a fresh machine), the response cache kept: the rerun asks the model nothing
    and its metrics keep the speed measured when the answers were computed, not the cache's."""
    import json

    from fairdistill.backends.cache import CachingBackend
    from fairdistill.runner import RunSpec, execute

    spec = RunSpec(model=str(tiny_gpt2_path), benchmark="bbq", out=tmp_path / "run",
                   options={"data": str(bbq_dir), "categories": ["Age"], "limit": 3, "mode": "loglik"})
    _, first = execute(spec, CachingBackend(tiny_gpt2, tmp_path / "c.sqlite"), show_progress=False)
    assert first["meta"]["cache_misses_this_session"] > 0 and first["meta"]["new_items_this_session"] == 3
    (tmp_path / "run" / "results.jsonl").unlink()
    _, again = execute(spec, CachingBackend(tiny_gpt2, tmp_path / "c.sqlite"), show_progress=False)
    assert again["meta"]["cache_misses_this_session"] == 0 and again["meta"]["cache_hits_this_session"] > 0
    measured = first["meta"]["timing"]
    env = measured.pop("environment")
    assert set(env) >= {"torch", "transformers", "cpu_bf16"} and env["cpu_bf16"] in ("amx", "avx512_bf16", None)
    assert measured == {"items": 3, "seconds": first["meta"]["seconds_this_session"], "from_earlier_session": False}
    measured["environment"] = env
    assert again["meta"]["timing"] == {**measured, "from_earlier_session": True}
    assert again["meta"]["seconds_this_session"] is None  # this session measured nothing: no cache speed
    assert again["rows"] == first["rows"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["meta"]["timing"]["from_earlier_session"]
    # the finished run opened again (a second process of the same study): this session did nothing,
    # and the measurement stays that of the session that computed the answers
    _, reopened = execute(spec, CachingBackend(tiny_gpt2, tmp_path / "c.sqlite"), show_progress=False)
    assert reopened["meta"]["new_items_this_session"] == 0
    assert reopened["meta"]["timing"] == {**measured, "from_earlier_session": True}
    assert reopened["meta"]["computed_on"] == first["meta"]["computed_on"] == [
        {"environment": env, "calls": first["meta"]["cache_misses_this_session"]}]
    # a metrics.json written before meta.timing existed: its *_this_session fields are the measurement
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    m["meta"] = {"new_items_this_session": 3, "seconds_this_session": 12.5}
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(m))
    _, legacy = execute(spec, CachingBackend(tiny_gpt2, tmp_path / "c.sqlite"), show_progress=False)
    assert legacy["meta"]["timing"] == {"items": 3, "seconds": 12.5, "from_earlier_session": True}
    assert legacy["meta"]["computed_on"] == [{"environment": None, "calls": None, "items": 3}]  # not recorded
    # a new run answered wholly from another run's cache: no timing at all rather than the cache's
    spec2 = spec.model_copy(update={"out": tmp_path / "run2"})
    _, cached = execute(spec2, CachingBackend(tiny_gpt2, tmp_path / "c.sqlite"), show_progress=False)
    assert cached["meta"]["seconds_this_session"] is None and cached["meta"]["new_items_this_session"] == 3
    assert "timing" not in cached["meta"]
    # a comparison says whether both runs' answers were computed on the same kind of machine: run2
    # measured no speed, but the cache recorded what computed each answer it reused
    from fairdistill.compare import compare

    assert cached["meta"]["computed_on"] == [{"environment": env, "calls": cached["meta"]["cache_hits_this_session"]}]
    assert compare(tmp_path / "run", tmp_path / "run2")["same_environment"] is None  # run's machine: not recorded
    (tmp_path / "run3").mkdir()
    for f in ("config.json", "results.jsonl", "metrics.json"):
        (tmp_path / "run3" / f).write_bytes((tmp_path / "run2" / f).read_bytes())
    assert compare(tmp_path / "run3", tmp_path / "run2")["same_environment"] is True
    # metrics without computed_on (written before the cache recorded it): the timing's environment
    m1 = json.loads((tmp_path / "run" / "metrics.json").read_text())
    m1["meta"]["timing"] = first["meta"]["timing"]
    m1["meta"].pop("computed_on")
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(m1))
    m2 = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    m2["meta"].pop("computed_on")
    (tmp_path / "run2" / "metrics.json").write_text(json.dumps(m2))
    assert compare(tmp_path / "run", tmp_path / "run2")["same_environment"] is None  # run2: nothing recorded
    m2["meta"]["timing"] = {"items": 3, "seconds": 1.0, "environment": {**env, "cpu_bf16": "elsewhere"}}
    (tmp_path / "run2" / "metrics.json").write_text(json.dumps(m2))
    c = compare(tmp_path / "run", tmp_path / "run2")
    assert c["same_environment"] is False and c["runs"]["method"]["computed_on"]["cpu_bf16"] == "elsewhere"
    assert c["cost"]["seconds_per_item"]["ratio"] is None and c["cost"]["seconds_per_item"]["method"] == 1.0 / 3
    m2["meta"]["timing"]["environment"] = env
    (tmp_path / "run2" / "metrics.json").write_text(json.dumps(m2))
    assert compare(tmp_path / "run", tmp_path / "run2")["same_environment"] is True


def test_a_run_resumed_on_another_kind_of_machine_is_known_to_mix_their_answers(tiny_gpt2, tiny_gpt2_path,
                                                                                bbq_dir, tmp_path):
    """The cache records what computed each answer: a run whose answers come partly from another kind
    of machine says so (meta.computed_on) and is never compared as like for like."""
    import json

    from fairdistill.backends.cache import CachingBackend
    from fairdistill.compare import compare
    from fairdistill.runner import RunSpec, environment, execute

    here = environment()
    there = {**here, "cpu_bf16": "another-machine"}
    opts = {"data": str(bbq_dir), "categories": ["Age"], "mode": "loglik"}

    def run(name: str, limit: int, env: dict):
        cb = CachingBackend(tiny_gpt2, tmp_path / "c.sqlite")
        cb.environment = json.dumps(env, sort_keys=True)  # as if opened on that machine
        spec = RunSpec(model=str(tiny_gpt2_path), benchmark="bbq", out=tmp_path / name, options={**opts, "limit": limit})
        return execute(spec, cb, show_progress=False)[1]["meta"]

    two = run("two", 2, there)          # the first items, computed elsewhere
    three = run("three", 3, here)       # reuses them, computes the third item here
    assert two["computed_on"] == [{"environment": there, "calls": two["cache_misses_this_session"]}]
    on = {json.dumps(e["environment"], sort_keys=True): e["calls"] for e in three["computed_on"]}
    assert on == {json.dumps(there, sort_keys=True): three["cache_hits_this_session"],
                  json.dumps(here, sort_keys=True): three["cache_misses_this_session"]}
    # its speed is that of the one item computed here (every item costs the same calls in loglik mode),
    # not the session's seconds spread over the two items it read from the cache
    t = three["timing"]
    assert (t["items"], t["items_computed"]) == (3, 1.0)
    assert (t["calls_computed"], t["calls_from_cache"]) == (three["cache_misses_this_session"],
                                                             three["cache_hits_this_session"])
    from fairdistill.compare import _wall

    assert _wall(tmp_path / "three") == (t["seconds"], t["seconds"] / 1.0)
    assert three["cache_hits_this_session"] > 0 and three["cache_misses_this_session"] > 0
    c = compare(tmp_path / "two", tmp_path / "three")
    assert c["same_environment"] is False and "mixed" in c["runs"]["method"]["computed_on"]
    # entries written by an older release (no record of their machine) make the run's machine unknown
    import sqlite3

    db = sqlite3.connect(tmp_path / "c.sqlite")
    db.execute("DELETE FROM computed_on WHERE environment = ?", (json.dumps(there, sort_keys=True),))
    db.commit()
    (tmp_path / "three" / "results.jsonl").unlink()
    again = run("three", 3, here)
    assert {json.dumps(e["environment"], sort_keys=True) for e in again["computed_on"]} == {
        "null", json.dumps(here, sort_keys=True)}
    assert compare(tmp_path / "three", tmp_path / "three")["same_environment"] is None
