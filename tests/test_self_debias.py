"""Self-Debias (Schick et al. 2021) as a model intervention: scores and generations equal a hand computation
of the paper's rescaling on the tiny models' own logits, on every request kind, and end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from doubles import ServedBackend
from fairdistill.cli import main
from fairdistill.errors import CapabilityError, UserError
from fairdistill.interventions import applied, get_intervention

PREFIXES = {"gender": "The following text discriminates against people because of their gender:\n",
            "religion": "The following text discriminates against people because of their religion:\n"}
OPTS = {"bias_types": "gender,religion", "decay_constant": 2000.0, "epsilon": 0.0}


def hand_debias(p_plain: np.ndarray, p_biased: list[np.ndarray], lam: float, eps: float) -> np.ndarray:
    """The paper's formula on probability vectors: Δ = p - max_i p_i, α = exp(λΔ) if Δ < 0 else 1 (floor ε)."""
    delta = p_plain - np.max(np.stack(p_biased), axis=0)
    alpha = np.where(delta < 0, np.exp(lam * delta), 1.0)
    alpha = np.maximum(alpha, eps)
    q = alpha * p_plain
    return q / q.sum()


def softmax(x: torch.Tensor) -> np.ndarray:
    return torch.softmax(x.double(), -1).numpy()


def logits_of(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def hand_span_logprob(be, ctx: list[int], cont: list[int], lead: int, lam=2000.0, eps=0.0) -> float:
    """Sum of debiased log P(cont | ctx) for a causal LM, prefix tokens put after ``lead`` start tokens."""
    pres = [be.tokenizer(PREFIXES[k], add_special_tokens=False)["input_ids"] for k in ("gender", "religion")]
    plain = logits_of(be.model, ctx + cont)
    biased = [logits_of(be.model, ctx[:lead] + pre + ctx[lead:] + cont) for pre in pres]
    total = 0.0
    for j, tok in enumerate(cont):
        q = len(ctx) - 1 + j  # the position predicting this token
        p = hand_debias(softmax(plain[q]), [softmax(b[q + len(pre)]) for b, pre in zip(biased, pres)], lam, eps)
        total += float(np.log(p[tok]))
    return total


def test_debiasing_formula_on_a_hand_made_distribution():
    from fairdistill.interventions.self_debias import debias_logprobs

    p = np.array([0.5, 0.3, 0.2])
    b1, b2 = np.array([0.4, 0.5, 0.1]), np.array([0.6, 0.2, 0.2])
    # Δ = p - max(b) = [-0.1, -0.2, 0.0]; α = [e^-5, e^-10, 1] at λ = 50
    want = np.array([0.5 * np.exp(-5), 0.3 * np.exp(-10), 0.2])
    want /= want.sum()
    got = debias_logprobs(torch.tensor(np.log(p)), [torch.tensor(np.log(b1)), torch.tensor(np.log(b2))], 50.0, 0.0)
    assert np.allclose(got.exp().numpy(), want)
    # ε floors α: at λ = 20, α = [e^-2, e^-4]; with ε = 0.05 the second becomes 0.05 (e^-4 < 0.05 < e^-2)
    floored = np.array([0.5 * np.exp(-2), 0.3 * 0.05, 0.2])
    got = debias_logprobs(torch.tensor(np.log(p)), [torch.tensor(np.log(b1)), torch.tensor(np.log(b2))], 20.0, 0.05)
    assert np.allclose(got.exp().numpy(), floored / floored.sum())


def test_sentence_logprob_equals_hand_computation(tiny_gpt2):
    be = tiny_gpt2
    text = "The nurse said that she was tired."
    ids = be.tokenizer(text, add_special_tokens=False)["input_ids"]
    start = be.tokenizer.eos_token_id  # GPT-2: sentences are scored after <|endoftext|>
    plain = be.sequence_logprob([text])[0][0]
    with applied(be, "self-debias", OPTS):
        got, n = be.sequence_logprob([text, "A second, longer sentence about the doctor and his patient."])[0]
    assert n == len(ids)
    want = hand_span_logprob(be, [start], ids, lead=1)
    assert got == pytest.approx(want, abs=1e-3)
    assert abs(got - plain) > 1e-3  # the rescaling moved the score
    assert be.intervention is None and be.sequence_logprob([text])[0][0] == pytest.approx(plain)  # detached


def test_option_loglikelihood_equals_hand_computation(tiny_llama_chat):
    """BBQ-style multiple choice (the tiny Llama's tokenizer adds no BOS to text: the prefix goes first)."""
    be = tiny_llama_chat
    context, options = "The nurse and the engineer talked. Who was kind?\nA:", [" The nurse", " The engineer"]
    plain = be.loglikelihood_choices([(context, options)])[0]
    with applied(be, "self-debias", OPTS):
        got = be.loglikelihood_choices([(context, options)])[0]
    for o, g in zip(options, got):
        ctx, cont = be._encode_pair(context, o)
        assert ctx[0] != be.tokenizer.bos_token_id
        assert g == pytest.approx(hand_span_logprob(be, ctx, cont, lead=0), abs=1e-3)
    assert got != pytest.approx(plain, abs=1e-4)


def test_masked_pll_equals_hand_computation(tiny_bert):
    be = tiny_bert
    tok = be.tokenizer
    ids = tok("the nurse said that she was tired", add_special_tokens=True)["input_ids"]
    positions = [2, 5]
    with applied(be, "self-debias", OPTS):
        got = be.pll_positions([ids], [positions])[0][0]
    pres = [tok(PREFIXES[k], add_special_tokens=False)["input_ids"] for k in ("gender", "religion")]
    want = 0.0
    for k in positions:
        masked = list(ids)
        masked[k] = tok.mask_token_id
        plain = softmax(logits_of(be.model, masked)[k])
        biased = [softmax(logits_of(be.model, masked[:1] + pre + masked[1:])[k + len(pre)]) for pre in pres]  # after [CLS]
        want += float(np.log(hand_debias(plain, biased, 2000.0, 0.0)[ids[k]]))
    assert got == pytest.approx(want, abs=1e-3)


def test_model_logits_for_lm_eval_equal_hand_computation(tiny_gpt2):
    be = tiny_gpt2
    ids = be.tokenizer("He said the doctor was late.", add_special_tokens=False)["input_ids"]
    with applied(be, "self-debias", OPTS):
        assert "adjusted_logits" in be.capabilities()
        out = be.model_logits(torch.tensor([ids]))
    assert "adjusted_logits" not in be.capabilities()
    pres = [be.tokenizer(PREFIXES[k], add_special_tokens=False)["input_ids"] for k in ("gender", "religion")]
    plain = logits_of(be.model, ids)
    for q in range(len(ids)):
        biased = [softmax(logits_of(be.model, pre + ids)[q + len(pre)]) for pre in pres]  # GPT-2: no BOS, prefix first
        want = hand_debias(softmax(plain[q]), biased, 2000.0, 0.0)
        assert np.allclose(torch.softmax(out[0, q].double(), -1).numpy(), want, atol=1e-5)


def test_generation_equals_hand_greedy_decoding(tiny_llama_chat):
    """The logits processor (one KV cache per prefix) decodes what full recomputation at every step decodes."""
    be = tiny_llama_chat
    from fairdistill.backends.base import GenerationRequest

    messages = [{"role": "user", "content": "Who was late, the nurse or the engineer?"}]
    prompt = be.tokenizer(be.apply_chat_template(messages), add_special_tokens=False)["input_ids"]
    pres = [be.tokenizer(PREFIXES[k], add_special_tokens=False)["input_ids"] for k in ("gender", "religion")]
    n_new = 8

    def hand_greedy(debiased: bool) -> list[int]:
        seq: list[int] = []
        for _ in range(n_new):
            p = softmax(logits_of(be.model, prompt + seq)[-1])
            if debiased:
                p = hand_debias(p, [softmax(logits_of(be.model, pre + prompt + seq)[-1]) for pre in pres], 2000.0, 0.0)
            seq.append(int(np.argmax(p)))
        return seq

    want = hand_greedy(True)
    assert want != hand_greedy(False)  # the rescaling changes this greedy path, so the check below means something
    req = GenerationRequest(messages=messages, max_new_tokens=n_new)
    other = GenerationRequest(messages=[{"role": "user", "content": "A much longer question so that the batch is padded."}],
                              max_new_tokens=n_new)
    with applied(be, "self-debias", OPTS):
        got = be.generate([req, other])[0]
    eos = be.tokenizer.eos_token_id
    cut = want.index(eos) if eos in want else len(want)
    assert got.text == be.tokenizer.decode(want[:cut], skip_special_tokens=True).strip()


def test_refused_outside_the_in_process_backend():
    with pytest.raises(CapabilityError, match="'self-debias' cannot run on the vllm backend: .*top-k"):
        with applied(ServedBackend("vllm"), "self-debias"):
            pass


def test_bad_options_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no prefix named 'colour'"):
        get_intervention("self-debias", bias_types="colour")
    with pytest.raises(UserError, match="has no option 'lambda'"):
        get_intervention("self-debias", **{"lambda": 3})
    bad = tmp_path / "p.yaml"
    bad.write_text("gender: 3\n")
    with pytest.raises(UserError, match="non-empty prefix text"):
        get_intervention("self-debias", prefixes=str(bad))
    with pytest.raises(UserError, match="unknown intervention 'self-debiasing'"):
        get_intervention("self-debiasing")


def test_crows_pairs_end_to_end_cli(tiny_gpt2_path, tmp_path, capsys):
    base = ["eval", "crows-pairs", "--model", str(tiny_gpt2_path), "--limit", "12", "--dtype", "float32", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "plain")]) == 0
    args = base + ["--out", str(tmp_path / "sd"), "--intervention", "self-debias",
                   "--intervention-option", "bias_types=gender", "--intervention-option", "decay_constant=2000"]
    assert main(args) == 0
    cfg = json.loads((tmp_path / "sd" / "config.json").read_text())
    assert cfg["identity"]["model"]["intervention"]["intervention"] == "self-debias"
    meta = json.loads((tmp_path / "sd" / "metrics.json").read_text())["meta"]
    assert meta["backend_stats"]["intervention"]["cost"] == {"extra_forward_passes": 1}
    plain = [json.loads(x)["score_more"] for x in (tmp_path / "plain" / "results.jsonl").read_text().splitlines()]
    sd = [json.loads(x)["score_more"] for x in (tmp_path / "sd" / "results.jsonl").read_text().splitlines()]
    assert len(sd) == 12 and sd != pytest.approx(plain, abs=1e-4)
    # a rerun resumes the same run; a different intervention option is a different run and is refused there
    assert main(args) == 0
    assert main(base + ["--out", str(tmp_path / "sd"), "--intervention", "self-debias"]) == 2
    assert "holds a different run" in capsys.readouterr().err


def test_bbq_generation_through_a_method_end_to_end(tiny_llama_chat_path, tmp_path):
    """An intervention and a method compose: every generated turn of reprompting is self-debiased."""
    out = tmp_path / "run"
    args = ["eval", "bbq", "--model", str(tiny_llama_chat_path), "--categories", "Age", "--limit", "2", "--mode",
            "generate", "--method", "reprompting", "--intervention", "self-debias", "--intervention-option",
            "bias_types=gender", "--dtype", "float32", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["identity"]["method"]["method"] == "reprompting"
    assert cfg["identity"]["model"]["intervention"]["intervention"] == "self-debias"
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(len(r["transcript"]) == 4 for r in recs)


def test_capability_scores_through_the_intervention(tiny_gpt2):
    """lm-evaluation-harness (capability) gets the self-debiased distributions, not the bare model's."""
    pytest.importorskip("lm_eval")
    from fairdistill.benchmarks.base import EvalContext
    from fairdistill.benchmarks.capability import Capability

    bench = Capability(tasks=["mmlu"], subjects=["anatomy"], limit=2)
    ids = torch.tensor([tiny_gpt2.tokenizer("The nurse said that she", add_special_tokens=False)["input_ids"]])
    plain = bench.lm(EvalContext(backend=tiny_gpt2))._model_call(ids)
    with applied(tiny_gpt2, "self-debias", OPTS):
        lm = bench.lm(EvalContext(backend=tiny_gpt2))
        got = lm._model_call(ids)
        assert torch.allclose(got, tiny_gpt2.model_logits(ids))
    assert not torch.allclose(torch.log_softmax(got, -1), torch.log_softmax(plain, -1), atol=1e-4)
    assert bench.lm(EvalContext(backend=tiny_gpt2)) is not lm  # the plain wrapper again once detached


def test_a_bfloat16_model_self_debiases_in_float32(tiny_gpt2_path, tiny_gpt2):
    """λ amplifies rounding, so the intervention computes in float32 with the checkpoint's own weights and
    hands the model back in bfloat16."""
    from fairdistill.backends.hf import HFBackend

    be = HFBackend.from_spec(str(tiny_gpt2_path), device="cpu", dtype="bfloat16")
    text = ["The nurse said that she was tired.", "He said the doctor was late."]
    bf16_plain = be.sequence_logprob(text)
    with applied(tiny_gpt2, "self-debias", OPTS):
        want = tiny_gpt2.sequence_logprob(text)
    with applied(be, "self-debias", OPTS):
        assert be.model.dtype == torch.float32 and be.describe()["dtype"] == "float32"
        got = be.sequence_logprob(text)
    assert got == want  # the same weights, the same float32 arithmetic
    assert be.model.dtype == torch.bfloat16 and be.sequence_logprob(text) == bf16_plain
    with applied(be, "self-debias", {**OPTS, "float32": False}):
        assert be.model.dtype == torch.bfloat16
