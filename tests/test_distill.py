"""Distillation: rule engine, FairDistillation (causal + masked, with vs without rule), resume,
self-distillation with a scripted teacher, CMAF sets. CI-sized (tiny random models, CPU)."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from fairdistill.distill.rules import apply_rules, load_rules, rule_balance_loss, rules_from_groups
from fairdistill.errors import UserError

# ------------------------------------------------------------------------------------------------
# rule engine


class _Tok:
    """A word-level tokenizer double: ' word' -> one id; unknown words split into characters."""

    def __init__(self, words):
        self.vocab = {w: i for i, w in enumerate(words)}
        self.unk_token_id = None

    def __call__(self, text, add_special_tokens=False):
        ids = []
        for w in text.split(" "):
            if not w:
                continue
            ids += [self.vocab[w]] if w in self.vocab else [self.vocab[c] for c in w]
        return {"input_ids": ids}

    def convert_ids_to_tokens(self, ids):
        inv = {i: w for w, i in self.vocab.items()}
        return [inv[i] for i in ids]


@pytest.fixture()
def tok():
    return _Tok(["a", "he", "she", "they", "his", "her", "him", "x", "y", "z", "w", "o", "m", "n"])


def test_logit_vs_prob_averaging_by_hand(tok):
    rs = rules_from_groups([["he", "she"]], tok)
    he, she = tok.vocab["he"], tok.vocab["she"]
    logits = torch.randn(2, 3, len(tok.vocab))
    logits[..., he], logits[..., she] = 2.0, -1.0
    out = apply_rules(logits, rs, "logit")
    assert torch.allclose(out[..., he], torch.full((2, 3), 0.5)) and torch.allclose(out[..., she], out[..., he])
    others = [i for i in range(len(tok.vocab)) if i not in (he, she)]
    assert torch.equal(out[..., others], logits[..., others])
    # prob averaging keeps the pair's mass and every other token's probability
    p = torch.softmax(logits, -1)
    q = torch.softmax(apply_rules(logits, rs, "prob"), -1)
    mass = p[..., he] + p[..., she]
    assert torch.allclose(q[..., he], mass / 2, atol=1e-6) and torch.allclose(q[..., she], mass / 2, atol=1e-6)
    assert torch.allclose(q[..., others], p[..., others], atol=1e-6)
    # logit averaging changes the pair's mass: by hand, exp(0.5) * 2 vs exp(2) + exp(-1)
    ql = torch.softmax(out, -1)
    z = p[..., others].sum(-1)  # unchanged relative weights of the others
    expect = 2 * math.exp(0.5) / (2 * math.exp(0.5) + (math.exp(2) + math.exp(-1)) * z / mass)
    assert torch.allclose(ql[..., he] + ql[..., she], expect, atol=1e-5)


def test_rule_balance_loss_by_hand(tok):
    rs = rules_from_groups([["he", "she"]], tok)
    he, she, x = tok.vocab["he"], tok.vocab["she"], tok.vocab["x"]
    v = len(tok.vocab)
    # student: P(he | he or she) = 0.2 at position 0, balanced at position 1
    student = torch.zeros(2, v)
    student[0, he], student[0, she] = math.log(0.2), math.log(0.8)
    # teacher: the pair holds mass 0.6 at position 0 and ~0 at position 1
    teacher = torch.full((2, v), -30.0)
    teacher[0, he], teacher[0, she], teacher[0, x] = math.log(0.1), math.log(0.5), math.log(0.4)
    teacher[1, x] = 0.0
    kl = -math.log(2) - 0.5 * (math.log(0.2) + math.log(0.8))  # KL(uniform || (0.2, 0.8))
    # mass-weighted: total weight 0.6 (< 1, so not normalised up)
    assert torch.isclose(rule_balance_loss(student, teacher, rs), torch.tensor(0.6 * kl), atol=1e-5)
    # two such positions and one implausible one: weights 0.6 + 0.6 + ~0 -> the weighted mean is kl
    three = [0, 0, 1]
    assert torch.isclose(rule_balance_loss(student[three], teacher[three], rs), torch.tensor(kl), atol=1e-5)
    # the teacher's own he/she preference is not the target (the rewritten one is): same value
    teacher[0, he], teacher[0, she] = math.log(0.5), math.log(0.1)
    assert torch.isclose(rule_balance_loss(student[three], teacher[three], rs), torch.tensor(kl), atol=1e-5)
    # where the pair is implausible for the teacher, an unbalanced student costs nothing
    assert rule_balance_loss(student[1:].clone().index_fill_(-1, torch.tensor([he]), 3.0), teacher[1:], rs) < 1e-6
    # a balanced student costs nothing; the loss is differentiable in the student's logits
    s = student.clone().requires_grad_(True)
    rule_balance_loss(s, teacher, rs).backward()
    assert s.grad[0, he] < 0 < s.grad[0, she]  # raise he, lower she
    student[0, he] = student[0, she]
    assert rule_balance_loss(student, teacher, rs) < 1e-6


def test_group_of_three_and_overlap_merge(tok):
    rs = rules_from_groups([["he", "she", "they"]], tok)
    logits = torch.tensor([[0.0] * len(tok.vocab)])
    ids = [tok.vocab[w] for w in ("he", "she", "they")]
    logits[0, ids] = torch.tensor([3.0, 0.0, -3.0])
    assert torch.allclose(apply_rules(logits, rs, "logit")[0, ids], torch.zeros(3))
    q = torch.softmax(apply_rules(logits, rs, "prob"), -1)[0, ids]
    assert torch.allclose(q, q[0].expand(3)) and abs(float(q.sum() - torch.softmax(logits, -1)[0, ids].sum())) < 1e-6
    # his/her and him/her share "her": merged by position into {his, him} = {her}
    rs2 = rules_from_groups([["his", "her"], ["him", "her"]], tok)
    assert len(rs2) == 1 and sorted(rs2.groups[0].sides[0]) == sorted([tok.vocab["his"], tok.vocab["him"]])
    lg = torch.randn(4, len(tok.vocab))
    q = torch.softmax(apply_rules(lg, rs2, "prob"), -1)
    assert torch.allclose(q[:, tok.vocab["his"]] + q[:, tok.vocab["him"]], q[:, tok.vocab["her"]], atol=1e-6)
    with pytest.raises(UserError, match="different sides"):
        rules_from_groups([["he", "she"], ["she", "he"]], tok)


def test_multi_token_words_reported(tiny_gpt2_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_gpt2_path)  # its tiny BPE splits " she" into " s" + "he"
    rs = rules_from_groups([["he", "she"], ["man", "woman"]], t)
    assert any("' she' is 2 tokens" in w and "first token" in w for w in rs.warnings), rs.warnings
    assert len(rs) == 2
    with pytest.raises(UserError, match="problem"):
        rules_from_groups([["he", "she"]], t, strict=True)
    skip = rules_from_groups([["he", "she"], ["man", "woman"]], t, multi_token="skip")
    assert len(skip) == 1 and any("skipped" in w for w in skip.warnings)


def test_shipped_gender_rules_and_bad_files(tmp_path, tiny_bert_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_bert_path)
    rs = load_rules("gender", t)
    assert len(rs) >= 1 and rs.warnings  # tiny vocab: many words reported, none silently dropped
    bad = {"bad.yaml": "rules: [[he]]", "bad2.yaml": "rules: {he: she}", "bad3.yaml": "rules: [[he, she]\n",
           "bad4.json": '{"rules": [["he", 3]]}', "bad5.yaml": "rulez: [[he, she]]"}
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError) as e:
            load_rules(tmp_path / name, t)
        assert "\n" not in str(e.value) and name in str(e.value)
    with pytest.raises(UserError, match="not found"):
        load_rules(tmp_path / "missing.yaml", t)


# ------------------------------------------------------------------------------------------------
# FairDistillation on tiny biased teachers

F_OCC = ["nurse", "secretary", "dancer", "librarian", "receptionist", "hairdresser", "cashier", "maid"]
M_OCC = ["engineer", "mechanic", "carpenter", "pilot", "driver", "farmer", "guard", "sheriff"]
HELD_F, HELD_M = ["librarian", "cashier"], ["farmer", "guard"]


def _bias_texts():
    tmpl = ["the {o} was a {g}.", "yesterday the {o} was a {g} again.", "i think the {o} was a {g}."]
    return [t.format(o=o, g="woman") for o in F_OCC for t in tmpl] + [t.format(o=o, g="man") for o in M_OCC for t in tmpl]


def _distill_corpus():
    seen = [o for o in F_OCC + M_OCC if o not in HELD_F + HELD_M]
    return [f"{p} the {o} was a {w}.".strip() for o in seen for p in ("", "yesterday", "i think")
            for w in ("person", "worker", "friend")]


def _biased_teacher(path, masked: bool, steps: int, lr: float):
    """Train a tiny random model on occupation -> man/woman text until it is clearly biased."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(path)
    model = (AutoModelForMaskedLM if masked else AutoModelForCausalLM).from_pretrained(path)
    enc = [tok(t) for t in _bias_texts()]
    gid = [tok(" man", add_special_tokens=False)["input_ids"][0], tok(" woman", add_special_tokens=False)["input_ids"][0]]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(0)
    model.train()
    for _ in range(steps):
        b = tok.pad(rng.sample(enc, 16), return_tensors="pt")
        ids = b["input_ids"]
        if masked:  # learn the gendered word at its masked position
            g = (ids == gid[0]) | (ids == gid[1])
            b["labels"] = torch.where(g, ids, torch.full_like(ids, -100))
            b["input_ids"] = torch.where(g, torch.full_like(ids, tok.mask_token_id), ids)
        else:
            b["labels"] = torch.where(b["attention_mask"].bool(), ids, torch.full_like(ids, -100))
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok


def _gap(model, tok, masked):
    from fairdistill.distill.fairdistill import ratio_summary, token_log_ratios

    probe = (lambda o: f"the {o} was a [MASK].") if masked else (lambda o: f"the {o} was a")
    f = token_log_ratios(model, tok, [probe(o) for o in HELD_F], "man", "woman")
    m = token_log_ratios(model, tok, [probe(o) for o in HELD_M], "man", "woman")
    return sum(m) / len(m) - sum(f) / len(f), ratio_summary(f + m)


@pytest.mark.parametrize("masked", [False, True], ids=["causal-gpt2", "masked-bert"])
def test_fairdistill_rule_removes_heldout_bias(masked, tiny_gpt2_path, tiny_bert_path, tmp_path):
    from fairdistill.distill.fairdistill import prepare_fairdistill, train_job

    # (tiny tokenizers are retrained per session, so these settings are checked on several builds)
    teacher, tok = _biased_teacher(tiny_bert_path if masked else tiny_gpt2_path, masked, *((200, 3e-3) if masked else (300, 1e-2)))
    t_gap, t_sum = _gap(teacher, tok, masked)
    assert t_gap > 5, f"teacher not biased enough to test: {t_gap}"
    res = {}
    for name, rule in (("rule", [["man", "woman"]]), ("norule", None)):
        rs = rules_from_groups(rule, tok) if rule else None
        job = prepare_fairdistill((teacher, tok), None, rs, _distill_corpus(), tmp_path / name, learning_rate=2e-3,
                                  max_steps=200, batch_size=16, save_steps=10_000, progress=False, device="cpu")
        summary = train_job(job)
        assert summary["global_step"] == 200 and summary["student_kind"] == "layers"
        assert job.student.config.num_hidden_layers == 1  # every other layer of 2
        res[name] = _gap(job.student, tok, masked)
    (r_gap, r_sum), (n_gap, n_sum) = res["rule"], res["norule"]
    msg = f"teacher gap {t_gap:.2f} {t_sum}; rule {r_gap:.2f} {r_sum}; no rule {n_gap:.2f} {n_sum}"
    # with the rule: held-out log-ratios near 0 and their spread shrinks (0.2: on one tiny-tokenizer
    # build the rule left 16 % of the teacher's gap; without it the student keeps over 30 %)
    assert abs(r_gap) < 0.2 * t_gap and r_sum["mean_abs"] < 0.2 * t_sum["mean_abs"], msg
    assert r_sum["spread"] < 0.25 * n_sum["spread"], msg
    # identical distillation without the rule keeps the teacher's pattern
    assert n_gap > 0.3 * t_gap and n_sum["spread"] > 0.3 * t_sum["spread"], msg


def test_resume_continues_from_checkpoint(tiny_gpt2_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from fairdistill.distill.fairdistill import last_checkpoint, prepare_fairdistill, train_job

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_path)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_gpt2_path).eval()
    corpus = _distill_corpus()
    opts = dict(learning_rate=1e-3, max_steps=6, batch_size=4, save_steps=3, progress=False, device="cpu")

    class StopAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                control.should_training_stop = True

    job = prepare_fairdistill((teacher, tok), None, "he_she", corpus, tmp_path / "a", callbacks=[StopAt3()], **opts)
    job.trainer.train()
    ck = last_checkpoint(tmp_path / "a")
    assert ck and ck.endswith("checkpoint-3")
    for f in ("optimizer.pt", "scheduler.pt", "trainer_state.json"):
        assert (tmp_path / "a" / "checkpoint-3" / f).exists()
    # the cut-off stretch's seconds, as a session that trained through train_job would have recorded them
    (tmp_path / "a" / "checkpoint-3" / "train_clock.json").write_text('{"seconds": 1000.0}')
    resumed = train_job(prepare_fairdistill((teacher, tok), None, "he_she", corpus, tmp_path / "a", **opts))
    assert resumed["resumed_from"].endswith("checkpoint-3") and resumed["global_step"] == 6
    assert 1000 < resumed["train_seconds"] < 1000 + 600  # both stretches, not just the last one
    straight = train_job(prepare_fairdistill((teacher, tok), None, "he_she", corpus, tmp_path / "b", **opts))
    clock = json.loads((tmp_path / "b" / "checkpoint-3" / "train_clock.json").read_text())["seconds"]
    assert 0 < clock <= straight["train_seconds"]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "student").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "student").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), "resumed run differs from an uninterrupted one"
    assert straight["rules"]["warnings"]  # " she" is two tokens in the tiny BPE: reported in the summary


def test_long_trainings_checkpoint_by_time_and_report_progress(tiny_gpt2_path, tmp_path, monkeypatch):
    # a CPU training of hours must not lose everything when a session ends between two step-based saves,
    # and a study's log must say how far it has got
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fairdistill.distill import fairdistill as fd

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_path)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_gpt2_path).eval()
    opts = dict(learning_rate=1e-3, max_steps=3, batch_size=4, save_steps=500, progress=False, device="cpu",
                save_total_limit=None)
    monkeypatch.setattr(fd, "JOURNAL_SECONDS", 0.0)
    lines: list[str] = []
    token = fd.train_journal.set(lines.append)
    try:
        fd.train_job(fd.prepare_fairdistill((teacher, tok), None, "he_she", _distill_corpus(), tmp_path / "t",
                                            save_minutes=1e-9, **opts))
    finally:
        fd.train_journal.reset(token)
    assert sorted(p.name for p in (tmp_path / "t").glob("checkpoint-*")) == [f"checkpoint-{i}" for i in (1, 2, 3)]
    assert [ln.split(",")[0] for ln in lines] == ["step 1/3", "step 2/3", "step 3/3"]
    assert "s per step" in lines[0] and "min left" in lines[0]
    # by steps only (save_minutes=0), and no journal outside a study: one checkpoint, at the end
    fd.train_job(fd.prepare_fairdistill((teacher, tok), None, "he_she", _distill_corpus(), tmp_path / "s",
                                        save_minutes=0, **opts))
    assert [p.name for p in (tmp_path / "s").glob("checkpoint-*")] == ["checkpoint-3"] and len(lines) == 3


def test_lora_student_and_errors(tiny_gpt2_path, tiny_bert_path, tmp_path):
    from fairdistill.distill import run_fairdistill

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in _distill_corpus()[:8]))
    s = run_fairdistill(str(tiny_gpt2_path), "lora", "he_she", str(corpus), str(tmp_path / "lora"), max_steps=2,
                        batch_size=4, progress=False, device="cpu", learning_rate=1e-3)
    assert s["student_kind"] == "lora" and (tmp_path / "lora" / "adapter").is_dir()
    assert (tmp_path / "lora" / "student" / "config.json").exists()
    # the rule-balance extension is logged as its own loss part, and is absent without rules
    kw = dict(max_steps=2, batch_size=4, progress=False, device="cpu", alpha_rule=5.0, logging_steps=1)
    r = run_fairdistill(str(tiny_gpt2_path), "lora", "he_she", str(corpus), str(tmp_path / "ar"), **kw)
    n = run_fairdistill(str(tiny_gpt2_path), "lora", None, str(corpus), str(tmp_path / "an"), **kw)
    assert r["last_log"]["rule"] > 0 and "rule" not in n["last_log"], (r["last_log"], n["last_log"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(UserError, match="empty"):
        run_fairdistill(str(tiny_gpt2_path), None, "he_she", str(empty), str(tmp_path / "x"))
    with pytest.raises(UserError, match="tokenizers differ"):
        run_fairdistill(str(tiny_gpt2_path), str(tiny_bert_path), "he_she", str(corpus), str(tmp_path / "y"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [[he]]")
    with pytest.raises(UserError, match="bad rules file"):
        run_fairdistill(str(tiny_gpt2_path), None, str(bad), str(corpus), str(tmp_path / "z"), device="cpu")
    with pytest.raises(UserError, match="unknown distillation option"):
        run_fairdistill(str(tiny_gpt2_path), None, "he_she", str(corpus), str(tmp_path / "z"), temprature=3)


# ------------------------------------------------------------------------------------------------
# self-distillation with a scripted teacher; CMAF sets


class AlwaysA:
    """Test double for a multi-pass method: answers letter A of whatever order it is shown, in 3 calls."""

    @staticmethod
    def make(calls: int = 3, asked: list | None = None):
        from fairdistill.methods.base import Method, MethodResult

        class _AlwaysA(Method):
            name = "always-a"

            def answer(self, questions, gen=None):
                if asked is not None:
                    asked.extend(q.meta["id"] for q in questions)
                return [MethodResult(text="A", transcript=[{"role": "assistant", "content": "A"}], calls=calls)
                        for _ in questions]

        return _AlwaysA


def test_self_distill_through_the_pipeline(tiny_llama_chat, bbq_dir, tmp_path):
    """Teacher, untrained model and student are runs of the one pipeline on the benchmark's own items;
    on held-out templates the student agrees with the teacher more than the untrained model and the
    best constant answer (McNemar), in one call per item instead of the teacher's three."""
    from fairdistill.distill.self_distill import run_self_distill
    from fairdistill.store import RunStore

    out = tmp_path / "sd"
    s = run_self_distill(tiny_llama_chat, AlwaysA.make(), str(bbq_dir / "Gender_identity.jsonl"), str(out),
                         limit=12, heldout=0.3, target="letter", epochs=20, learning_rate=5e-3, batch_size=8,
                         lora_r=16, progress=False, device="cpu", max_new_tokens=4,
                         transfer=[{"name": "occupation-gender", "options": {"limit": 4}}])
    msg = json.dumps({k: s.get(k) for k in ("heldout", "n_train", "n_heldout")}, default=str)[:3000]
    assert s["n_items"] == 24 and s["n_train"] + s["n_heldout"] == 24 and s["sft_examples"] == s["n_train"]
    # the runs are ordinary run folders of the benchmark: held-out ids only, disjoint templates
    held = {c: RunStore(out / "heldout" / c / "student").load_results() for c in ("ambig", "disambig")}
    train_ids = {json.loads(x)["id"] for x in (out / "sft.jsonl").read_text().splitlines()}
    teacher_all = {r["id"]: r for c in ("ambig", "disambig") for r in RunStore(out / "teacher" / c).load_results()}
    assert len(teacher_all) == 24 and sum(map(len, held.values())) == s["n_heldout"]
    tmpl = lambda r: (r["category"], r["question_index"])  # noqa: E731
    held_templates = {tmpl(r) for rs in held.values() for r in rs}
    assert held_templates and not held_templates & {tmpl(teacher_all[i]) for i in train_ids}
    for c in ("ambig", "disambig"):
        for who in ("teacher", "untrained", "student"):
            m = json.loads((out / "heldout" / c / who / "metrics.json").read_text())
            acc = [r for r in m["rows"] if r["metric"] == "accuracy" and r["category"] == "overall"]
            assert acc and acc[0]["n"] == len(held[c]), (c, who)
            if who != "untrained":  # the untrained tiny model names no option: its bias score is undefined
                assert any(r["metric"] == "bias_score" and r["ci_low"] is not None for r in m["rows"]), (c, who)
    ag = s["heldout"]["agreement"]
    assert ag["n"] == s["n_heldout"] and ag["calls_per_item"] == {"teacher": 3.0, "untrained": 1.0, "student": 1.0}
    # a random tiny model never answers with a letter; the student learned "A"
    assert ag["answers"]["untrained"] == {"unparsed": s["n_heldout"]}, msg
    assert ag["untrained_vs_teacher"] == 0 and ag["student_vs_teacher"] >= 0.9, msg
    # the best constant answer is a role (unknown / biased / anti-biased), which "always A" is not
    assert ag["constant_answer"] in ("unknown", "biased", "anti-biased") and ag["constant_vs_teacher"] < 0.7, msg
    assert ag["student_vs_untrained_mcnemar"]["p_value"] < 0.05 and ag["student_vs_constant_mcnemar"]["p_value"] < 0.05
    comp = s["heldout"]["comparisons"]["ambig"]["student_minus_untrained"]
    assert {r["metric"] for r in comp} >= {"accuracy", "s_AMB"} and all("p_value" in r for r in comp)
    # a benchmark it was not trained on, before and after
    tr = s["transfer"]["occupation-gender"]
    assert tr["untrained"]["rows"] and tr["student"]["rows"]
    assert (out / "student_model").exists() is False  # in-process: the adapter, no merged copy
    assert (out / "adapter" / "adapter_config.json").exists()
    assert not any("lora_" in n for n, _ in tiny_llama_chat.model.named_modules())  # handed back clean
    # the agreement figures are a run folder of tidy rows: a report shows them with the held-out runs
    from fairdistill.report import build_report

    html = build_report([d for d, _ in s["report_runs"]], tmp_path / "r.html", labels=[x for _, x in s["report_runs"]])
    text = html.read_text()
    assert "agreement with teacher" in text and "held-out ambig: student" in text
    rows = json.loads((out / "summary" / "metrics.json").read_text())["rows"]
    st = next(r for r in rows if r["model"] == "student" and r["metric"] == "agreement with teacher")
    assert st["value"] == ag["student_vs_teacher"] and st["ci_low"] < st["value"] <= st["ci_high"]


def test_self_distill_teacher_runs_resume(tiny_llama_chat, bbq_dir, tmp_path):
    """The teacher's run resumes like every run: a rerun asks only what is missing; the held-out teacher
    run is answered from the response cache."""
    from fairdistill.distill.self_distill import run_self_distill

    asked: list = []
    kw = dict(limit=10, condition="ambig", max_steps=1, evaluate=False, progress=False, device="cpu")
    out = tmp_path / "sd"
    run_self_distill(tiny_llama_chat, AlwaysA.make(asked=asked), str(bbq_dir / "Age.jsonl"), str(out), **kw)
    t_path = out / "teacher" / "ambig" / "results.jsonl"
    lines = t_path.read_text().splitlines()
    assert len(lines) == 10 and len(asked) == 10
    t_path.write_text("\n".join(lines[:8]) + "\n" + lines[8][:25])  # cut as by a kill during the write
    lost = {json.loads(x)["id"] for x in lines[8:]}
    asked.clear()
    run_self_distill(tiny_llama_chat, AlwaysA.make(asked=asked), str(bbq_dir / "Age.jsonl"), str(out), **kw)
    assert set(asked) == lost and len(asked) == 2


def test_self_distill_explicit_split_from_id_files(tiny_llama_chat, bbq_dir, tmp_path):
    """split=explicit: the items and the held-out ids come from files fixed before the run (a pre-registered
    draw); every run evaluates exactly those items, and the SFT set holds only the training ids."""
    from fairdistill.benchmarks.bbq import load_category
    from fairdistill.distill.self_distill import run_self_distill

    rows = load_category(bbq_dir, "Age")
    amb = [f"Age-{r['example_id']}" for r in rows if r["context_condition"] == "ambig"][100:106]
    dis = [f"Age-{r['example_id']}" for r in rows if r["context_condition"] == "disambig"][200:204]
    (tmp_path / "items.txt").write_text("# drawn before any run\n" + "\n".join(amb + dis) + "\n")
    held = [amb[0], amb[3], dis[1]]
    (tmp_path / "held.txt").write_text("\n".join(held) + "\n\n")
    out = tmp_path / "sd"
    s = run_self_distill(tiny_llama_chat, AlwaysA.make(), "bbq", str(out), limit=None, categories="Age",
                         split="explicit", items=f"@{tmp_path / 'items.txt'}", heldout_items=f"@{tmp_path / 'held.txt'}",
                         target="letter", max_steps=1, progress=False, device="cpu", max_new_tokens=2)
    assert s["n_items"] == 10 and s["n_heldout"] == 3 and s["n_train"] == 7
    sft_ids = {json.loads(x)["id"] for x in (out / "sft.jsonl").read_text().splitlines()}
    assert sft_ids == set(amb + dis) - set(held)
    teacher = {json.loads(x)["id"] for c in ("ambig", "disambig") for x in (out / "teacher" / c / "results.jsonl").open()}
    assert teacher == set(amb + dis)
    student = {json.loads(x)["id"] for c in ("ambig", "disambig")
               for x in (out / "heldout" / c / "student" / "results.jsonl").open()}
    assert student == set(held)
    (tmp_path / "bad.txt").write_text("Age-999999\n")
    with pytest.raises(UserError, match="held-out ids are not among the listed items"):
        run_self_distill(tiny_llama_chat, AlwaysA.make(), "bbq", str(tmp_path / "sd2"), limit=None, categories="Age",
                         split="explicit", items=f"@{tmp_path / 'items.txt'}", heldout_items=f"@{tmp_path / 'bad.txt'}",
                         max_steps=1, progress=False, device="cpu")


def test_self_distill_by_model_path(tiny_llama_chat_path, bbq_dir, tmp_path):
    """By model string: evaluation through a cached backend, training on a float32 copy, the student saved
    merged (an evaluable model folder); a rerun reuses every stage."""
    from fairdistill.distill.self_distill import run_self_distill

    kw = dict(limit=4, categories="Age", condition="ambig", heldout=0.5, split="random", max_steps=2,
              progress=False, device="cpu", max_new_tokens=3)
    asked: list = []
    s = run_self_distill(str(tiny_llama_chat_path), AlwaysA.make(calls=2, asked=asked), "bbq", str(tmp_path / "sd"), **kw)
    assert (tmp_path / "sd" / "student_model" / "config.json").exists() and s["model_dir"].endswith("student_model")
    assert s["heldout"]["agreement"]["calls_per_item"]["teacher"] == 2.0
    assert s["global_step"] == 2 and (tmp_path / "sd" / "responses.sqlite").exists()
    n_asked = len(asked)
    again = run_self_distill(str(tiny_llama_chat_path), AlwaysA.make(calls=2, asked=asked), "bbq", str(tmp_path / "sd"), **kw)
    assert again["heldout"]["agreement"] == s["heldout"]["agreement"] and len(asked) == n_asked


CMAF_RECORDS = [
    {"prompt": "Describe a nurse.", "response": "A nurse cares for patients.", "accepted": True, "model": "m1",
     "score": 0.9},
    {"prompt": "Describe a nurse.", "response": "She is a caring woman.", "verdict": "reject", "model": "m2",
     "score": 0.2},
    {"prompt": "Describe a pilot.", "response": "He flies planes.", "accepted": False, "model": "m1"},
    {"prompt": "Describe a pilot.", "response": "A pilot flies aircraft.", "verdict": "accept", "model": "m2"},
    {"prompt": "Describe a pilot.", "response": "Pilots fly.", "verdict": "accept", "model": "m1"},
]


def test_cmaf_sets(tmp_path):
    from fairdistill.distill.cmaf import build_cmaf_sets

    recs = CMAF_RECORDS
    r = build_cmaf_sets(recs, tmp_path)
    assert (r["n_accepted"], r["n_rejected"], r["n_pairs"], r["n_prompts"]) == (3, 2, 3, 2)
    prefs = [json.loads(x) for x in (tmp_path / "preferences.jsonl").read_text().splitlines()]
    assert prefs[0]["chosen"][0]["content"] == "A nurse cares for patients."
    assert prefs[0]["rejected"][0]["content"] == "She is a caring woman." and prefs[0]["prompt"][0]["role"] == "user"
    assert build_cmaf_sets(recs, models=["m1"])["n_pairs"] == 1
    with pytest.raises(UserError, match="verdict"):
        build_cmaf_sets([{"prompt": "p", "response": "r"}])


def test_cmaf_finetune_prefers_accepted_answers(tiny_llama_chat_path, tmp_path):
    """End to end on a tiny chat model: after CMAF fine-tuning the adapter makes the panel's accepted
    answers likelier than before, and likelier than the rejected ones it never trained on."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fairdistill.distill.cmaf import run_cmaf_finetune
    from fairdistill.distill.sft import encode_chat_example

    s = run_cmaf_finetune(str(tiny_llama_chat_path), CMAF_RECORDS, str(tmp_path / "cmaf"), epochs=60,
                          learning_rate=5e-3, batch_size=3, lora_r=16, progress=False, device="cpu")
    assert s["n_accepted"] == 3 and s["train_examples"] == 3
    tok = AutoTokenizer.from_pretrained(tiny_llama_chat_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_chat_path).eval()

    def nll(model, rec):
        ex = encode_chat_example(tok, [{"role": "user", "content": rec["prompt"]}], rec["response"], 512)
        with torch.no_grad():
            return model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]])).loss.item()

    acc = [r for r in CMAF_RECORDS if r.get("accepted") is True or r.get("verdict") == "accept"]
    rej = [r for r in CMAF_RECORDS if r not in acc]
    before = ([nll(base, r) for r in acc], [nll(base, r) for r in rej])
    student = PeftModel.from_pretrained(base, str(tmp_path / "cmaf" / "adapter")).eval()
    after = ([nll(student, r) for r in acc], [nll(student, r) for r in rej])
    msg = f"before {before}, after {after}"
    # (a random tiny model's logits span well under one nat, so the margins are small but clear)
    assert all(a < b - 0.3 for a, b in zip(after[0], before[0])), msg
    assert sum(after[0]) / len(acc) + 0.25 < sum(after[1]) / len(rej), msg
    assert abs(sum(before[0]) / len(acc) - sum(before[1]) / len(rej)) < 0.1, msg


def test_option_target_under_shuffled_order_and_template_split(bbq_dir):
    """target=option: the completion is the teacher's option text, shown under a per-item shuffled
    order; split=template: held-out items come from templates never trained on."""
    from fairdistill.distill.self_distill import SelfDistillConfig, item_specs, sft_example, split_items

    cfg = SelfDistillConfig.from_kwargs(limit=30, seed=0, categories="Age", target="option")
    specs = item_specs("m", "bbq", cfg)
    assert set(specs) == {"ambig", "disambig"} and specs["ambig"].options["condition"] == "ambig"
    benches = {c: s.build_benchmark() for c, s in specs.items()}
    items = {c: b.load_items() for c, b in benches.items()}
    held = split_items(benches, items, 0.3, 0, by="template")
    rows = [it for c in items for it in items[c]]
    tmpl = lambda r: (r["category"], r["question_index"])  # noqa: E731
    assert held and not {tmpl(r) for r in rows if r["id"] in held} & {tmpl(r) for r in rows if r["id"] not in held}
    assert abs(len(held) - 18) <= 8  # about the held-out fraction, in whole templates
    orders = set()
    bench = benches["ambig"]
    for row in [r for r in rows if r["id"] not in held][:20]:
        ex = sft_example(bench, row, {"pred": int(row["label"]), "final_text": "B"}, "option", seed=0)
        assert ex["completion"] == row[f"ans{row['label']}"]
        shown = ex["messages"][0]["content"]
        for d, o in enumerate(ex["order"]):
            assert f"{'ABC'[d]}. {row[f'ans{o}']}" in shown
        orders.add(tuple(ex["order"]))
        assert ex == sft_example(bench, row, {"pred": int(row["label"]), "final_text": "B"}, "option", seed=0)
    assert len(orders) > 2
    assert sft_example(bench, rows[0], {"pred": None}, "option", 0) is None  # unparsed: no target
    with pytest.raises(UserError, match="split"):
        SelfDistillConfig.from_kwargs(split="by-vibes")
    with pytest.raises(UserError, match="prompt set not found"):
        item_specs("m", "/no/such/folder", cfg)

def test_rules_clashing_only_through_a_truncated_word_drop_that_token(tiny_gpt2_path):
    """The tiny BPE splits ' she' into ' s' + 'he': a rule on ' she' then stands on the token ' s'. A
    second rule whose (whole or first) token ' s' is on the other side is the tokenizer's clash, not a
    contradiction of the rules: the token is left out of both, with a warning, and training can run."""
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_gpt2_path)
    s_id = t.encode(" she")[0]
    other = next(w for w in ("sir", "son", "sister", "sun", "sea", "six") if t.encode(" " + w)[0] == s_id)
    rs = rules_from_groups([["he", "she"], [other, "madam"]], t)
    assert any("left out of both" in w for w in rs.warnings), rs.warnings
    assert all(s_id not in side for g in rs.groups for side in g.sides)
    with pytest.raises(UserError, match="different sides"):  # whole words in contradiction stay an error
        rules_from_groups([["he", "she"], ["she", "he"]], t)
