"""Supervised fine-tuning of a LoRA adapter on chat examples (shared by self-distillation and CMAF).

An example is ``{"messages": [chat turns], "completion": str}``; the loss is on the completion
(the assistant answer and the template's end-of-turn tokens) only. The loop is transformers'
``Trainer`` configured like FairDistillation's (checkpoints, resume, gradient accumulation, bf16 on
CUDA).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import UserError


@dataclass
class SFTConfig:
    """Training options of a LoRA SFT run (keywords of :func:`run_self_distill` / :func:`run_cmaf_finetune`)."""

    seed: int = 0
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
    save_minutes: float = 10.0        # also checkpoint after this much training time since the last save (0: steps only)
    save_total_limit: int | None = 2
    logging_steps: int = 10
    mixed_precision: str = "auto"
    device: str = "auto"
    progress: bool = True
    resume: bool = True


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


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write ``rows``; under several processes rank 0 alone writes (all hold the same rows)."""
    from ..distributed import dist_env

    rows = list(rows)
    if not dist_env().is_main:
        return len(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
            n += 1
    return n


def train_lora_sft(model, tokenizer, examples: Sequence[dict], out: Path, cfg: SFTConfig):
    """LoRA SFT on ``examples`` (``{"messages", "completion"}``); the adapter and tokenizer go to
    ``out/adapter``. Returns (peft model, train summary)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import Trainer

    from .fairdistill import FairDistillConfig, _clock_callback, _clock_of, _quiet, _resolve_device, last_checkpoint, \
        rich_progress_callback, train_journal, training_arguments, wall_clock_callback

    if not examples:
        raise UserError("the SFT set is empty (no teacher answer could be used as a target)")
    rows = [encode_chat_example(tokenizer, e["messages"], e["completion"], cfg.max_length) for e in examples]
    torch.manual_seed(cfg.seed)
    device = _resolve_device(cfg.device)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target, task_type=TaskType.CAUSAL_LM)
    peft_model = get_peft_model(model, lcfg)
    fd_like = FairDistillConfig(learning_rate=cfg.learning_rate, warmup=cfg.warmup, weight_decay=cfg.weight_decay,
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
    before = _clock_of(resume)  # seconds spent before that checkpoint: train_seconds is the whole training's
    t0 = time.perf_counter()
    trainer.add_callback(_clock_callback(t0, before))
    trainer.add_callback(wall_clock_callback(cfg.save_minutes, train_journal.get()))
    res = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out / "adapter"))  # rank 0 writes (FSDP / DeepSpeed shards gathered first)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out / "adapter"))
    trainer.accelerator.wait_for_everyone()
    return peft_model, {"train_examples": len(rows), "global_step": trainer.state.global_step,
                        "train_loss": getattr(res, "training_loss", None), "resumed_from": resume,
                        "train_seconds": round(time.perf_counter() - t0 + before, 2)}
