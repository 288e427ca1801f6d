"""Self-distillation of debiased behaviour, and CMAF adjudicated fine-tuning sets.

Self-distillation (this project's synthesis, see METHODS.md): the teacher is the model itself
wrapped in an inference-time method (``reprompting``, ``explanation``, ``adjudication``, ...), which
needs several model calls per question. Its final answers on a prompt set become an SFT set; a LoRA
adapter (peft) is trained so that the plain model, given the *baseline* prompt (one user turn), gives
the teacher's final answer in one call. Loss is on the answer tokens only (the prompt is masked).

Pipeline (:func:`run_self_distill`):

1. questions from the prompt set (BBQ rows -> lettered multiple choice, or a jsonl of prompts);
   split into train / held-out (seeded; ``split="template"`` holds out whole BBQ templates);
2. teacher answers (all questions; cached in ``out/teacher.jsonl``, reused on a rerun), and the
   untrained model's baseline answers on the held-out split;
3. SFT targets: the teacher's parsed letter (``target="letter"``), its final text
   (``target="text"``), or the chosen option's text shown under a seeded shuffled option order
   (``target="option"``: a letter prior cannot pass for the behaviour); answers that do not parse
   are counted and left out;
4. LoRA SFT with transformers' Trainer (checkpoints / resume / grad accumulation / bf16 on CUDA);
5. evaluation on held-out (and train) items: agreement with the teacher's answers for the
   untrained model and for the student, model calls per item, and for BBQ rows the ambiguous bias
   score and accuracy of teacher, untrained model and student.

CMAF (cross-model adjudication): :func:`build_cmaf_sets` turns adjudicated responses into an SFT
set (accepted responses) and preference pairs (accepted vs rejected for the same prompt; TRL's
``prompt/chosen/rejected`` conversational format); :func:`run_cmaf_finetune` trains a LoRA adapter
on the SFT set.
"""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..errors import UserError, reject_unknown_options
from ..methods.base import GenerationConfig, Method, MethodResult, Question, user_turn
from ..store import JsonlLog

LETTERS = "ABCDEFGHIJ"


@dataclass
class SelfDistillConfig:
    """Options of :func:`run_self_distill` / :func:`run_cmaf_finetune` (keywords)."""

    limit: int = 60                   # prompts used in all (train + held-out), seeded sample
    heldout: float = 0.3              # fraction of prompts held out for evaluation
    seed: int = 0
    categories: str | None = None     # BBQ: comma-separated categories (default: all present)
    condition: str = "both"           # BBQ: both | ambig | disambig
    target: str = "letter"            # SFT target: the teacher's parsed "letter", its final "text", or
                                      # "option": the chosen option's text under a shuffled option order
                                      # (BBQ), so a letter prior cannot pass for the behaviour
    split: str = "random"             # held-out items: "random", or "template" (whole BBQ templates held out)
    max_new_tokens: int = 16          # generation length of teacher / student answers
    method_options: dict = field(default_factory=dict)  # passed to get_method(...)
    learning_rate: float = 2e-4
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 1
    warmup: float = 0.1
    weight_decay: float = 0.0
    max_length: int = 512
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target: str = "all-linear"
    save_steps: int = 500
    save_total_limit: int | None = 2
    logging_steps: int = 10
    mixed_precision: str = "auto"
    device: str = "auto"
    progress: bool = True
    resume: bool = True
    evaluate: bool = True
    eval_train: bool = True           # also report agreement on the training prompts

    @classmethod
    def from_kwargs(cls, **kw: Any) -> "SelfDistillConfig":
        reject_unknown_options(kw, (f.name for f in fields(cls)), "self-distillation")
        cfg = cls(**kw)
        if cfg.target not in ("letter", "text", "option"):
            raise UserError(f"unknown target {cfg.target!r}; use letter, text or option")
        if cfg.split not in ("random", "template"):
            raise UserError(f"unknown split {cfg.split!r}; use random or template")
        if not 0 <= cfg.heldout < 1:
            raise UserError("heldout must be a fraction in [0, 1)")
        return cfg


# -- prompts -------------------------------------------------------------------------------------
def bbq_question(row: dict) -> Question:
    """The BBQ lettered multiple-choice question (the benchmark module's own when available)."""
    try:
        from ..benchmarks.bbq import mc_question

        q = mc_question(row)
    except ImportError:  # pragma: no cover - the benchmark module is optional here
        opts = [row["ans0"], row["ans1"], row["ans2"]]
        body = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(opts))
        q = Question(prompt=f"{row['context']}\n{row['question']}\n{body}",
                     answer_instruction="Answer with a single letter.", options=opts)
    q.meta = {**(q.meta or {}), "id": row.get("id") or f"{row.get('category')}-{row.get('example_id')}", "bbq_row": row}
    return q


def _is_bbq_row(row: dict) -> bool:
    return all(k in row for k in ("context", "question", "ans0", "ans1", "ans2"))


def load_prompt_questions(prompts: str | Sequence[Question], cfg: SelfDistillConfig) -> list[Question]:
    """Questions from ``prompts``: ``"bbq"`` (the BBQ data folder), a folder of BBQ category jsonl files,
    one BBQ jsonl file, a jsonl of ``{"prompt", "answer_instruction"?, "options"?, "id"?}`` rows, or a list
    of :class:`Question`. A seeded sample of ``cfg.limit`` questions (spread over files) is returned."""
    from ..data import find_dataset, read_jsonl

    if not isinstance(prompts, (str, os.PathLike)):
        qs = list(prompts)
    else:
        p = find_dataset("bbq") if str(prompts) == "bbq" else Path(prompts).expanduser()
        if not p.exists():
            raise UserError(f"prompt set not found: {prompts}")
        files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
        if cfg.categories:
            want = [c for c in str(cfg.categories).split(",") if c]
            files = [f for f in files if f.stem in want]
            if not files:
                raise UserError(f"no prompt files for categories {cfg.categories} in {p}")
        if not files:
            raise UserError(f"no .jsonl prompt files in {p}")
        per_file: list[list[Question]] = []
        for f in files:
            rows = list(read_jsonl(f))
            qs_f = []
            for k, row in enumerate(rows, 1):
                if _is_bbq_row(row):
                    if cfg.condition != "both" and row.get("context_condition") != cfg.condition:
                        continue
                    qs_f.append(bbq_question(row))
                elif isinstance(row.get("prompt"), str):
                    qs_f.append(Question(prompt=row["prompt"],
                                         answer_instruction=row.get("answer_instruction", "Answer with a single letter."),
                                         options=list(row.get("options") or []),
                                         meta={"id": row.get("id", f"{f.stem}-{k}")}))
                else:
                    raise UserError(f"{f}: row {k} is neither a BBQ item nor has a 'prompt' field")
            per_file.append(qs_f)
        rng = random.Random(cfg.seed)
        for qs_f in per_file:
            rng.shuffle(qs_f)
        qs = []  # round-robin over files so a small limit still covers every category
        while any(per_file) and len(qs) < cfg.limit:
            for qs_f in per_file:
                if qs_f and len(qs) < cfg.limit:
                    qs.append(qs_f.pop())
    if not qs:
        raise UserError(f"prompt set {prompts} has no questions")
    return qs[: cfg.limit]


def split_questions(qs: Sequence[Question], heldout: float, seed: int,
                    by: str = "random") -> tuple[list[Question], list[Question]]:
    """(train, held-out). ``by="template"``: whole BBQ templates (category + question_index) are held
    out, so held-out items are other templates, not paraphrases of trained ones."""
    n_held = int(round(len(qs) * heldout))
    if by == "template":
        def key(q):
            row = (q.meta or {}).get("bbq_row") or {}
            return (row.get("category"), row.get("question_index")) if row else ("#", q.meta.get("id"))

        groups: dict = {}
        for k, q in enumerate(qs):
            groups.setdefault(key(q), []).append(k)
        order = sorted(groups, key=str)
        random.Random(f"split-{seed}").shuffle(order)
        held: set[int] = set()
        for g in order:
            if len(held) >= n_held:
                break
            held.update(groups[g])
    elif by == "random":
        idx = list(range(len(qs)))
        random.Random(f"split-{seed}").shuffle(idx)
        held = set(idx[:n_held])
    else:
        raise UserError(f"unknown split {by!r}; use random or template")
    return [q for k, q in enumerate(qs) if k not in held], [q for k, q in enumerate(qs) if k in held]


def sft_example(q: Question, teacher_record: dict, target: str, seed: int) -> dict[str, Any]:
    """One SFT example: the baseline prompt and the completion the student should learn."""
    row = (q.meta or {}).get("bbq_row")
    pred = teacher_record["pred"]
    if target == "letter":
        return {"messages": [{"role": "user", "content": user_turn(q)}], "completion": LETTERS[pred]}
    if target == "text":
        return {"messages": [{"role": "user", "content": user_turn(q)}], "completion": teacher_record["final_text"]}
    if target != "option":
        raise UserError(f"unknown self-distillation target {target!r}; use letter, text or option")
    if row is None:  # a free-form prompt's options cannot be reordered: the option text, as asked
        return {"messages": [{"role": "user", "content": user_turn(q)}], "completion": q.options[pred]}
    from ..benchmarks.bbq import mc_question

    order = [0, 1, 2]
    random.Random(f"order-{seed}-{q.meta.get('id')}").shuffle(order)
    shown = mc_question(row, order)
    return {"messages": [{"role": "user", "content": user_turn(shown)}], "completion": row[f"ans{pred}"],
            "order": order}


# -- parsing -------------------------------------------------------------------------------------
def parse_answer(q: Question, text: str) -> tuple[int | None, str]:
    """Option index of a final answer: BBQ's own parser for BBQ questions, else a letter pattern or
    an option's text. Returns (index or None, status)."""
    row = (q.meta or {}).get("bbq_row")
    if row is not None:
        from ..benchmarks.bbq_scoring import parse_generated_answer

        return parse_generated_answer(row, text)
    from ..benchmarks.bbq_scoring import parse_letter

    t = (text or "").strip().replace("**", "")
    k = parse_letter(t, LETTERS[: len(q.options) or len(LETTERS)])
    if k is not None:
        return k, "ok"
    low = t.lower()
    hits = [i for i, o in enumerate(q.options) if o and o.lower() in low]
    if len(hits) == 1:
        return hits[0], "ok"
    return None, "unparseable"


# -- SFT data ------------------------------------------------------------------------------------
def encode_chat_example(tokenizer, messages: list[dict], completion: str, max_length: int) -> dict[str, list[int]]:
    """Token ids and labels for one prompt/completion pair in the model's chat format; the loss is
    on the completion (the assistant answer and the template's end-of-turn tokens) only."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": completion}], tokenize=False)
    if full.startswith(prompt):
        comp_text = full[len(prompt):]
    else:  # template re-renders earlier turns differently: fall back to answer + EOS
        comp_text = completion + (tokenizer.eos_token or "")
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(comp_text, add_special_tokens=False)["input_ids"]
    if len(p_ids) + len(c_ids) > max_length:
        p_ids = p_ids[-(max_length - len(c_ids)):] if len(c_ids) < max_length else []
        c_ids = c_ids[:max_length]
    return {"input_ids": p_ids + c_ids, "labels": [-100] * len(p_ids) + c_ids}


def completion_collator(pad_id: int):
    """Right-pads input_ids / labels (-100) / attention_mask to the batch's longest example."""
    import torch

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
        lab = torch.full((len(batch), n), -100, dtype=torch.long)
        att = torch.zeros((len(batch), n), dtype=torch.long)
        for r, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[r, :k] = torch.tensor(b["input_ids"])
            lab[r, :k] = torch.tensor(b["labels"])
            att[r, :k] = 1
        return {"input_ids": ids, "labels": lab, "attention_mask": att}

    return collate


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
            n += 1
    return n


def train_lora_sft(model, tokenizer, examples: Sequence[dict], out: Path, cfg: SelfDistillConfig):
    """LoRA SFT on ``examples`` (``{"messages", "completion"}``); returns (peft model, train summary)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import Trainer

    from .fairdistill import TrainConfig, _quiet, _resolve_device, last_checkpoint, rich_progress_callback, \
        training_arguments

    if not examples:
        raise UserError("the SFT set is empty (no teacher answer could be used as a target)")
    rows = [encode_chat_example(tokenizer, e["messages"], e["completion"], cfg.max_length) for e in examples]
    torch.manual_seed(cfg.seed)
    device = _resolve_device(cfg.device)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target, task_type=TaskType.CAUSAL_LM)
    peft_model = get_peft_model(model, lcfg)
    fd_like = TrainConfig(learning_rate=cfg.learning_rate, warmup=cfg.warmup, weight_decay=cfg.weight_decay,
                          batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, epochs=cfg.epochs,
                          max_steps=cfg.max_steps, save_steps=cfg.save_steps,
                          save_total_limit=cfg.save_total_limit, logging_steps=cfg.logging_steps,
                          seed=cfg.seed, mixed_precision=cfg.mixed_precision)
    args = training_arguments(out / "checkpoints", fd_like, device)
    trainer = Trainer(model=peft_model, args=args, train_dataset=rows,
                      data_collator=completion_collator(tokenizer.pad_token_id))
    _quiet(trainer)
    if cfg.progress:
        trainer.add_callback(rich_progress_callback())
    resume = last_checkpoint(out / "checkpoints") if cfg.resume else None
    t0 = time.perf_counter()
    res = trainer.train(resume_from_checkpoint=resume)
    peft_model.save_pretrained(str(out / "adapter"))
    tokenizer.save_pretrained(str(out / "adapter"))
    return peft_model, {"train_examples": len(rows), "global_step": trainer.state.global_step,
                        "train_loss": getattr(res, "training_loss", None), "resumed_from": resume,
                        "train_seconds": round(time.perf_counter() - t0, 2)}


# -- teacher -------------------------------------------------------------------------------------
def make_teacher(method: str | Method | type | Callable, backend, options: dict) -> Method:
    """A Method instance from a registered name, a Method, a Method subclass or a factory(backend)."""
    from ..methods.base import get_method

    if isinstance(method, Method):
        return method
    if isinstance(method, str):
        return get_method(method, backend, **options)
    if isinstance(method, type) and issubclass(method, Method):
        return method(backend, **options)
    if callable(method):
        return method(backend)
    raise UserError(f"cannot use {method!r} as a teacher method")


def _answers_records(qs: Sequence[Question], results: Sequence[MethodResult]) -> list[dict]:
    out = []
    for q, r in zip(qs, results):
        idx, status = parse_answer(q, r.text)
        out.append({"id": (q.meta or {}).get("id"), "prompt": user_turn(q), "final_text": r.text, "pred": idx,
                    "status": status, "calls": r.calls, "transcript": r.transcript})
    return out


def _agreement(a: Sequence[dict], b: Sequence[dict]) -> dict[str, Any]:
    both = [(x["pred"], y["pred"]) for x, y in zip(a, b) if y["pred"] is not None]
    agree = sum(1 for x, y in both if x == y)
    return {"agreement": round(agree / len(both), 4) if both else None, "n": len(both)}


def _letter_counts(recs: Sequence[dict]) -> dict[str, int]:
    """How often each option letter was answered (a student that collapsed onto one letter shows here)."""
    counts: dict[str, int] = {}
    for r in recs:
        k = LETTERS[r["pred"]] if r["pred"] is not None else "unparsed"
        counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))


def _mean_calls(recs: Sequence[dict]) -> float:
    return round(sum(r["calls"] for r in recs) / max(len(recs), 1), 3)


def _changed_items(base: Sequence[dict], student: Sequence[dict], teacher: Sequence[dict]) -> dict[str, Any]:
    """Agreement where it is informative: items whose teacher answer differs from the untrained model's.

    When the method rarely changes the model's answer, overall agreement is high before any training;
    the items it does change say whether the student learned the method's behaviour. McNemar's exact
    test compares the student's and the untrained model's agreement with the teacher, item by item.
    """
    from ..stats.paired import mcnemar_exact

    keep = [k for k, t in enumerate(teacher) if t["pred"] is not None]
    changed = [k for k in keep if base[k]["pred"] != teacher[k]["pred"]]
    test = mcnemar_exact([base[k]["pred"] == teacher[k]["pred"] for k in keep],
                         [student[k]["pred"] == teacher[k]["pred"] for k in keep])
    return {"n": len(changed),
            "student_matches_teacher": sum(student[k]["pred"] == teacher[k]["pred"] for k in changed),
            "student_keeps_untrained": sum(student[k]["pred"] == base[k]["pred"] for k in changed),
            "agreement_mcnemar": {"gained": test["incorrect->correct"], "lost": test["correct->incorrect"],
                                  "p_value": test["p_value"]}}


def _bbq_summary(qs: Sequence[Question], recs: Sequence[dict]) -> dict[str, Any] | None:
    rows = [(q.meta or {}).get("bbq_row") for q in qs]
    if not rows or any(r is None for r in rows):
        return None
    from ..benchmarks.bbq_scoring import bbq_metrics

    scored = [{**row, "pred": rec["pred"], "pred_status": rec["status"]} for row, rec in zip(rows, recs)]
    try:
        m = bbq_metrics(scored, pred_key="pred", n_boot=200)
    except UserError:
        return None
    out = {}
    for r in m["rows"]:
        if r["category"] == "overall":
            out[f"{r['condition']}_{r['metric']}"] = r["value"]
    return out


def _answer_all(method: Method, qs: Sequence[Question], gen: GenerationConfig, batch: int = 16,
                desc: str | None = None, show: bool = False,
                on_batch: Callable[[Sequence[Question], list[MethodResult]], None] | None = None,
                ) -> list[MethodResult]:
    """Answer ``qs`` in batches; ``on_batch`` sees each finished batch (to store it at once)."""
    from ..runner import progress_bar

    out: list[MethodResult] = []
    with progress_bar(disable=not show) as bar:
        task = bar.add_task(desc or getattr(method, "name", "answers"), total=len(qs), rate="")
        for i in range(0, len(qs), batch):
            chunk = qs[i:i + batch]
            res = method.answer(chunk, gen)
            out += res
            if on_batch is not None:
                on_batch(chunk, res)
            bar.update(task, advance=len(chunk))
    return out


def run_self_distill(model: str, method: str | Method | type | Callable, prompts: str | Sequence[Question], out: str,
                     **config: Any) -> dict[str, Any]:
    """Self-distil an inference-time method into a LoRA adapter on the plain model.

    Arguments:
        model: model string (directory, hub id, built-in name such as ``smollm2``); a chat model.
        method: the teacher: a registered method name (``reprompting``, ``explanation``,
            ``adjudication``, ...; options via ``method_options={...}``), or a Method instance /
            subclass / factory ``backend -> Method`` (test doubles, custom teachers).
        prompts: ``"bbq"``, a folder of BBQ category jsonl files, one BBQ jsonl file, or a jsonl
            of ``{"prompt", "answer_instruction"?, "options"?, "id"?}`` rows.
        out: output folder: ``teacher.jsonl`` (the teacher's answers and transcripts; reused on a
            rerun), ``sft.jsonl`` (the SFT set), ``adapter/`` (the LoRA adapter + tokenizer; load
            with peft), ``checkpoints/``, ``eval.jsonl`` (held-out answers), ``self_distill.json``.
        **config: any :class:`SelfDistillConfig` field: limit (60), heldout (0.3), seed,
            categories, condition (both|ambig|disambig), target (letter|text|option), split
            (random|template), max_new_tokens (16),
            method_options, learning_rate (2e-4), epochs (3), max_steps, batch_size (4),
            grad_accum, warmup, max_length (512), lora_r (8) / lora_alpha (16) / lora_dropout /
            lora_target (all-linear), save_steps, mixed_precision, device, progress, resume,
            evaluate, eval_train.

    Returns the summary written to ``out/self_distill.json``: on held-out prompts, agreement of the
    untrained model's and of the student's one-pass answers with the teacher's answers, next to the
    agreement of a constant answer (the teacher's most frequent training answer: what a student that
    collapsed onto one letter gets) and on the items where the teacher changed the untrained answer;
    how often each letter was answered; calls per item (teacher vs 1); and for BBQ prompts the
    ambiguous / disambiguated bias score and accuracy of teacher, untrained model and student.
    """
    from ..backends.hf import HFBackend
    from ..methods.base import get_method

    cfg = SelfDistillConfig.from_kwargs(**config)
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    from .fairdistill import _resolve_device

    device = _resolve_device(cfg.device)
    backend = model if isinstance(model, HFBackend) else HFBackend.from_spec(str(model), device=device, dtype="float32")
    backend.require(chat=True, what="self-distillation")
    qs = load_prompt_questions(prompts, cfg)
    train_q, held_q = split_questions(qs, cfg.heldout, cfg.seed, by=cfg.split)
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0, seed=cfg.seed)

    t_recs, n_cached, teacher_seconds = _teacher_answers(method, backend, qs, gen, cfg, outp)
    # the untrained model, baseline prompt, one call (before the adapter exists)
    eval_q = list(held_q) + (list(train_q) if cfg.eval_train else [])
    base_recs = _answers_records(eval_q, _answer_all(get_method("baseline", backend), eval_q, gen,
                                                     desc="untrained model", show=cfg.progress)) if cfg.evaluate else []
    sft, skipped = _sft_set(train_q, t_recs, cfg, outp)
    peft_model, train_info = train_lora_sft(backend.model, backend.tokenizer, sft, outp, cfg)
    try:
        summary: dict[str, Any] = {
            "model": str(model) if isinstance(model, str) else backend.name,
            "method": method if isinstance(method, str) else getattr(method, "name", type(method).__name__),
            "prompts": str(prompts) if isinstance(prompts, (str, os.PathLike)) else "inline",
            "config": asdict(cfg), "n_prompts": len(qs), "n_train": len(train_q), "n_heldout": len(held_q),
            "sft_examples": len(sft), "sft_skipped_unparsed_teacher": skipped,
            "teacher_seconds": round(teacher_seconds, 2), "teacher_cached": n_cached, **train_info,
        }
        if cfg.evaluate:
            student_be = HFBackend(peft_model, backend.tokenizer, name=f"{backend.name}+self-distill",
                                   batch_size=backend.batch_size, device=backend.device)
            stud_recs = _answers_records(eval_q, _answer_all(get_method("baseline", student_be), eval_q, gen,
                                                             desc="student", show=cfg.progress))
            summary.update(_evaluation(train_q, held_q, t_recs, base_recs, stud_recs, cfg, outp))
        (outp / "self_distill.json").write_text(json.dumps(summary, indent=2, default=str))
    finally:
        if isinstance(model, HFBackend):  # peft injected the adapter into the caller's model: take it out
            peft_model.unload()
    return summary


def _teacher_answers(method, backend, qs: Sequence[Question], gen: GenerationConfig, cfg: SelfDistillConfig,
                     outp: Path) -> tuple[dict[str, dict], int, float]:
    """The teacher's answer to every question, appended to ``teacher.jsonl`` batch by batch and reused
    on a rerun. Returns (records by id, how many were cached, seconds spent now)."""
    t_log = JsonlLog(outp / "teacher.jsonl")
    cached = t_log.load() if cfg.resume else {}
    todo = [q for q in qs if (q.meta or {}).get("id") not in cached]
    t0 = time.perf_counter()
    if todo:
        if not cfg.resume:
            t_log.path.unlink(missing_ok=True)
        teacher = make_teacher(method, backend, cfg.method_options)

        def keep(chunk: Sequence[Question], res: list[MethodResult]) -> None:
            recs = _answers_records(chunk, res)
            t_log.append(recs)
            cached.update((r["id"], r) for r in recs)

        try:
            _answer_all(teacher, todo, gen, desc=f"teacher ({getattr(teacher, 'name', 'method')})",
                        show=cfg.progress, on_batch=keep)
        finally:
            t_log.close()
    return {q.meta["id"]: cached[q.meta["id"]] for q in qs}, len(qs) - len(todo), time.perf_counter() - t0


def _sft_set(train_q: Sequence[Question], t_recs: dict, cfg: SelfDistillConfig, outp: Path) -> tuple[list[dict], int]:
    """Baseline prompt -> the teacher's final answer (``cfg.target``), written to ``sft.jsonl``;
    teacher answers that did not parse are left out and counted."""
    sft, skipped = [], 0
    for q in train_q:
        r = t_recs[q.meta["id"]]
        if r["pred"] is None:
            skipped += 1
            continue
        sft.append({"id": r["id"], **sft_example(q, r, cfg.target, cfg.seed)})
    _write_jsonl(outp / "sft.jsonl", sft)
    return sft, skipped


def _evaluation(train_q, held_q, t_recs: dict, base_recs: list[dict], stud_recs: list[dict],
                cfg: SelfDistillConfig, outp: Path) -> dict[str, Any]:
    """Per split: agreement of untrained model, student and a constant answer with the teacher, letter
    counts, the items the teacher changed, calls per item, unparsed answers and BBQ scores; and
    ``eval.jsonl`` with every item's answers."""
    nh = len(held_q)
    splits = {"heldout": (held_q, slice(0, nh))}
    if cfg.eval_train:
        splits["train"] = (train_q, slice(nh, None))
    # the trivial student: always the teacher's most frequent training answer
    majority = max(range(len(LETTERS)), key=[t_recs[q.meta["id"]]["pred"] for q in train_q].count)
    out: dict[str, Any] = {}
    for name, (sq, sl) in splits.items():
        t_split = [t_recs[q.meta["id"]] for q in sq]
        b_split, s_split = base_recs[sl], stud_recs[sl]
        out[name] = {
            "untrained_vs_teacher": _agreement(b_split, t_split),
            "student_vs_teacher": _agreement(s_split, t_split),
            "constant_answer_vs_teacher": {"answer": LETTERS[majority],
                                           **_agreement([{"pred": majority}] * len(t_split), t_split)},
            "answers": {k: _letter_counts(v) for k, v in
                        (("teacher", t_split), ("untrained", b_split), ("student", s_split))},
            "where_teacher_changed_answer": _changed_items(b_split, s_split, t_split),
            "calls_per_item": {"teacher": _mean_calls(t_split), "untrained": 1, "student": _mean_calls(s_split)},
            "unparsed": {"teacher": sum(r["pred"] is None for r in t_split),
                         "untrained": sum(r["pred"] is None for r in b_split),
                         "student": sum(r["pred"] is None for r in s_split)},
        }
        bbq = {k: _bbq_summary(sq, v) for k, v in (("teacher", t_split), ("untrained", b_split), ("student", s_split))}
        if all(v is not None for v in bbq.values()):
            out[name]["bbq"] = bbq
    _write_jsonl(outp / "eval.jsonl", [{"split": "heldout" if k < nh else "train", "id": b["id"],
                                        "teacher": t_recs[b["id"]]["pred"], "untrained": b["pred"],
                                        "student": s["pred"], "student_text": s["final_text"]}
                                       for k, (b, s) in enumerate(zip(base_recs, stud_recs))])
    return out


# -- CMAF ----------------------------------------------------------------------------------------
def _verdict(rec: dict) -> bool:
    if "accepted" in rec:
        return bool(rec["accepted"])
    v = str(rec.get("verdict", "")).lower()
    if v in ("accept", "accepted", "pass", "ok"):
        return True
    if v in ("reject", "rejected", "fail"):
        return False
    raise UserError(f"adjudication record {rec.get('id', '?')} has no 'accepted' flag or accept/reject 'verdict'")


def _prompt_messages(rec: dict) -> list[dict]:
    if isinstance(rec.get("messages"), list):
        return rec["messages"]
    if isinstance(rec.get("prompt"), str):
        return [{"role": "user", "content": rec["prompt"]}]
    raise UserError(f"adjudication record {rec.get('id', '?')} has no 'prompt' or 'messages'")


def build_cmaf_sets(records: Iterable[dict], out: str | Path | None = None, *, max_pairs_per_prompt: int = 4,
                    models: Sequence[str] | None = None) -> dict[str, Any]:
    """CMAF data: accepted responses -> SFT set; accepted vs rejected for one prompt -> preference pairs.

    ``records``: one per adjudicated response: ``prompt`` (str) or ``messages`` (chat list),
    ``response`` (str), ``accepted`` (bool) or ``verdict`` (accept/reject), optionally ``model``
    (who answered), ``score`` (the panel's aggregate; higher = less biased, orders the pairs),
    ``judges`` (the panel's votes, kept as metadata), ``id``. ``models``: keep only responses of these
    answering models (each CMAF model is fine-tuned on the accepted set; by default all).

    Writes ``sft.jsonl`` (``{"messages", "completion", "model", "id"}``) and ``preferences.jsonl``
    (``{"prompt": [messages], "chosen": [assistant msg], "rejected": [assistant msg]}``, TRL's
    conversational preference format) under ``out`` if given. Returns the two lists and counts.
    """
    by_prompt: dict[str, dict[str, Any]] = {}
    n = 0
    for rec in records:
        if models and rec.get("model") not in models:
            continue
        if not isinstance(rec.get("response"), str):
            raise UserError(f"adjudication record {rec.get('id', '?')} has no string 'response'")
        msgs = _prompt_messages(rec)
        key = json.dumps(msgs, sort_keys=True)
        slot = by_prompt.setdefault(key, {"messages": msgs, "accepted": [], "rejected": []})
        slot["accepted" if _verdict(rec) else "rejected"].append(rec)
        n += 1
    if not n:
        raise UserError("no adjudication records (after the model filter)")
    sft, prefs = [], []
    score = lambda r: float(r.get("score", 0.0) or 0.0)  # noqa: E731
    for slot in by_prompt.values():
        acc = sorted(slot["accepted"], key=score, reverse=True)
        rej = sorted(slot["rejected"], key=score)
        for r in acc:
            sft.append({"id": r.get("id"), "messages": slot["messages"], "completion": r["response"],
                        "model": r.get("model"), "score": r.get("score")})
        pairs = [(a, b) for a in acc for b in rej][:max_pairs_per_prompt]
        for a, b in pairs:
            prefs.append({"prompt": slot["messages"], "chosen": [{"role": "assistant", "content": a["response"]}],
                          "rejected": [{"role": "assistant", "content": b["response"]}],
                          "chosen_model": a.get("model"), "rejected_model": b.get("model")})
    result = {"sft": sft, "preferences": prefs, "n_records": n, "n_prompts": len(by_prompt),
              "n_accepted": len(sft), "n_rejected": n - len(sft), "n_pairs": len(prefs)}
    if out is not None:
        o = Path(out)
        _write_jsonl(o / "sft.jsonl", sft)
        _write_jsonl(o / "preferences.jsonl", prefs)
    return result


def run_cmaf_finetune(model: str, adjudicated: str | Sequence[dict], out: str, **config: Any) -> dict[str, Any]:
    """CMAF fine-tuning: build the SFT / preference sets from adjudication records (a jsonl file or a
    list, format in :func:`build_cmaf_sets`) and train a LoRA adapter on the accepted responses.
    ``config``: SelfDistillConfig fields (training ones), plus ``models`` (answering models to keep)
    and ``max_pairs_per_prompt``. Writes ``sft.jsonl``, ``preferences.jsonl``, ``adapter/``, ``cmaf.json``."""
    from ..backends.hf import HFBackend
    from ..data import read_jsonl

    models = config.pop("models", None)
    max_pairs = config.pop("max_pairs_per_prompt", 4)
    cfg = SelfDistillConfig.from_kwargs(**config)
    recs = list(read_jsonl(adjudicated)) if isinstance(adjudicated, (str, os.PathLike)) else list(adjudicated)
    sets = build_cmaf_sets(recs, out, max_pairs_per_prompt=max_pairs, models=models)
    from .fairdistill import _resolve_device

    backend = HFBackend.from_spec(str(model), device=_resolve_device(cfg.device), dtype="float32")
    backend.require(chat=True, what="CMAF fine-tuning")
    _, info = train_lora_sft(backend.model, backend.tokenizer, sets["sft"], Path(out), cfg)
    summary = {k: v for k, v in sets.items() if k not in ("sft", "preferences")}
    summary.update(info, model=str(model), config=asdict(cfg))
    (Path(out) / "cmaf.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


__all__ = ["SelfDistillConfig", "run_self_distill", "load_prompt_questions", "split_questions", "parse_answer",
           "encode_chat_example", "train_lora_sft", "build_cmaf_sets", "run_cmaf_finetune", "bbq_question"]
