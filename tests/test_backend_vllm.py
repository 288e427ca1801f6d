"""The vLLM backend without vLLM: a stand-in ``vllm`` module whose engine scores with the tiny
transformers model, so the parallelism options' pass-through and the backend's own tokenisation
and log-likelihood assembly are checked against the in-process backend."""
from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

import pytest

from fairdistill.errors import UserError


class FakeLLM:
    """``vllm.LLM`` stand-in: records its keywords; prompt log-probs from the real tiny model."""

    made: list[tuple[str, dict]] = []

    def __init__(self, model: str, **kw):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        FakeLLM.made.append((model, kw))
        self._tok = AutoTokenizer.from_pretrained(model)
        self._model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()

    def get_tokenizer(self):
        return self._tok

    def generate(self, prompts, params, use_tqdm=False):
        import torch

        assert params.prompt_logprobs == 1 and params.max_tokens == 1
        outs = []
        with torch.no_grad():
            for p in prompts:
                ids = p["prompt_token_ids"]
                lp = torch.log_softmax(self._model(torch.tensor([ids])).logits[0].float(), -1)
                # vLLM's shape: None for the first prompt token, then {token id: Logprob} per position
                row = [None] + [{t: SimpleNamespace(logprob=float(lp[i, t]))} for i, t in enumerate(ids[1:])]
                outs.append(SimpleNamespace(prompt_logprobs=row, prompt_token_ids=ids, outputs=[]))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM
    mod.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    FakeLLM.made.clear()
    return FakeLLM


def test_parallel_options_pass_through(fake_vllm, tiny_gpt2_path):
    from fairdistill.backends.base import load_backend

    be = load_backend(f"vllm:{tiny_gpt2_path}", device="auto", dtype="bf16", batch_size=16,
                      tensor_parallel_size="4", pipeline_parallel_size=2, data_parallel_size="2",
                      distributed_executor_backend="ray", gpu_memory_utilization="0.85", no_such_key=1)
    model, kw = fake_vllm.made[-1]
    assert model == str(tiny_gpt2_path)
    assert kw == {"tensor_parallel_size": 4, "pipeline_parallel_size": 2, "data_parallel_size": 2,
                  "distributed_executor_backend": "ray", "dtype": "bfloat16", "gpu_memory_utilization": 0.85}
    # the layout is not the run's identity: a run resumes on another number of GPUs
    assert "tensor_parallel_size" not in json.dumps(be.describe())
    with pytest.raises(UserError, match="tensor_parallel_size='two' is not an integer"):
        load_backend(f"vllm:{tiny_gpt2_path}", tensor_parallel_size="two")
    with pytest.raises(UserError, match="unknown distributed_executor_backend 'slurm'"):
        load_backend(f"vllm:{tiny_gpt2_path}", distributed_executor_backend="slurm")


def test_cli_backend_options_reach_the_engine_and_bbq_matches_in_process(fake_vllm, tiny_gpt2_path, tmp_path):
    from fairdistill.cli import main

    common = ["eval", "bbq", "--categories", "Age,Religion", "--limit", "5", "--dtype", "float32", "--no-progress"]
    assert main(common + ["--model", f"vllm:{tiny_gpt2_path}", "--out", str(tmp_path / "v"),
                          "--backend-option", "tensor_parallel_size=2", "--backend-option", "data_parallel_size=2",
                          "--backend-option", "distributed_executor_backend=mp"]) == 0
    kw = fake_vllm.made[-1][1]
    assert (kw["tensor_parallel_size"], kw["data_parallel_size"], kw["distributed_executor_backend"]) == (2, 2, "mp")
    assert main(common + ["--model", str(tiny_gpt2_path), "--out", str(tmp_path / "hf")]) == 0
    v, h = ([json.loads(x) for x in (tmp_path / d / "results.jsonl").read_text().splitlines()] for d in ("v", "hf"))
    assert len(v) == len(h) == 10
    assert [r["pred"] for r in v] == [r["pred"] for r in h]
    for a, b in zip(v, h):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-3)
