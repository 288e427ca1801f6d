"""FairDistillation (Delobelle & Berendt, ECML-PKDD 2022) for masked and causal LMs.

A frozen teacher's output distribution at every non-padding position is rewritten by equality
rules (:mod:`fairdistill.distill.rules`) and distilled into a student::

    loss = alpha_kl * T^2 * KL(rewrite(teacher / T) || student / T)      (default 5.0, T = 2)
         + alpha_lm * LM loss  (next-token for causal LMs, 15% MLM for masked LMs; default 2.0)
         + alpha_cos * (1 - cos(student last hidden state, teacher last hidden state))  (default 1.0)

AdamW, lr 2e-5, linear warm-up and decay (as published; all configurable in
:class:`FairDistillConfig`). The student is the teacher with fewer layers of the same architecture
(:func:`make_layer_subset_student`, initialised from the kept layers as DistilBERT does), the
teacher plus a LoRA adapter (peft; the teacher is then the same weights with the adapter
disabled, so no second copy is held), or any model with the same tokenizer.

One extension, off by default (``alpha_rule=0``): ``+ alpha_rule * rule_balance_loss`` (see
:func:`fairdistill.distill.rules.rule_balance_loss`). Why: for a masked LM the rule acts at masked
pronoun slots where he/she hold most of the mass; for a causal LM at T = 2 they hold a tiny share of
the next-token distribution (SmolLM2 after "The nurse said that": P(" he") = 0.3%, P(" she") = 0.8%
at T = 2), so the rewrite moves the teacher there by a KL of ~1e-3 (x T^2), against an LM loss of
~1 per token, and the published objective needs very long training to move the student. The term
measures only the choice *within* each group, weighted by where the group is plausible; measured on
SmolLM2 it takes the held-out he/she log-ratio from -1.08 to -0.07 in 150 LoRA steps, where the
published objective alone reaches -0.64 (README, "Mitigate by training").

The training loop is transformers' ``Trainer`` (accelerate underneath): gradient accumulation,
bf16 on CUDA, checkpoints with optimizer / scheduler / RNG state, and resume from the last
checkpoint are theirs. This module adds only the loss, the data collator choice and the student
construction (TRL's shape: a thin trainer subclass configured by a dataclass).
"""
from __future__ import annotations

import contextvars
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from ..errors import UserError, reject_unknown_options
from ..modeling import _num_layers, layer_list_name  # noqa: F401  (their old home)
from ..text.corpora import read_corpus  # noqa: F401  (its old home)
from .rules import RuleSet, apply_rules, load_rules, rule_balance_loss


# -- configuration -------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """The training budget, corpus and LoRA options every training-side method shares (FairDistillation,
    CDA); every field can be passed as a keyword."""

    learning_rate: float = 2e-5
    warmup: float = 0.1               # warm-up steps (int) or fraction of all steps (float < 1)
    weight_decay: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1               # gradient accumulation steps
    epochs: float = 1.0
    max_steps: int = -1               # > 0 overrides epochs
    max_length: int = 128             # tokens per example (longer texts are truncated)
    max_examples: int | None = None   # use only the first N corpus examples
    mlm_probability: float = 0.15     # masked LMs only
    save_steps: int = 500
    save_minutes: float = 10.0        # also checkpoint after this much training time since the last save (0: steps only)
    save_total_limit: int | None = 2
    logging_steps: int = 10
    seed: int = 0
    mixed_precision: str = "auto"     # auto (bf16 on CUDA if supported, else fp32) | no | bf16 | fp16
    resume: bool = True               # continue from the last checkpoint in `out` if there is one
    progress: bool = True             # rich progress bar
    device: str = "auto"              # auto | cpu | cuda
    lora_r: int = 8                   # LoRA student
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target: str = "all-linear"

    #: how unknown options are named in the one-line error
    what: ClassVar[str] = "training"

    @classmethod
    def from_kwargs(cls, **kw: Any) -> "TrainConfig":
        reject_unknown_options(kw, (f.name for f in fields(cls)), cls.what)
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise UserError(f"unknown mixed precision {self.mixed_precision!r}; use auto, no, bf16 or fp16")
        if self.batch_size < 1 or self.grad_accum < 1 or self.max_length < 2:
            raise UserError("batch_size and grad_accum must be >= 1 and max_length >= 2")


@dataclass
class FairDistillConfig(TrainConfig):
    """Options of :func:`run_fairdistill`: the shared :class:`TrainConfig` plus the distillation loss."""

    temperature: float = 2.0          # T
    alpha_kl: float = 5.0             # weight of T^2 * KL(teacher_T || student_T)
    alpha_lm: float = 2.0             # weight of the LM / MLM loss on the corpus
    alpha_cos: float = 1.0            # weight of the last-hidden-state cosine loss
    alpha_rule: float = 0.0           # extension, off by default: weight of the rule-balance term (below)
    rule_mode: str = "logit"          # "logit" (original: average logits) or "prob" (average probabilities)
    keep: str = "every_other"         # layer-subset student: every_other | first_half | "0,2,5"
    strict_rules: bool = False        # a rule word that is not a single token is an error

    what: ClassVar[str] = "distillation"

    def validate(self) -> None:
        super().validate()
        if self.rule_mode not in ("logit", "prob"):
            raise UserError(f"unknown rule mode {self.rule_mode!r}; use logit or prob")
        if self.temperature <= 0:
            raise UserError("temperature must be > 0")


# -- models --------------------------------------------------------------------------------------
def _keep_indices(keep: str | Sequence[int], n: int) -> list[int]:
    if isinstance(keep, str):
        if keep == "every_other":
            idx = list(range(0, n, 2))
        elif keep == "first_half":
            idx = list(range(max(1, n // 2)))
        else:
            try:
                idx = [int(x) for x in keep.split(",") if x.strip()]
            except ValueError:
                raise UserError(f"unknown layer selection {keep!r}; use every_other, first_half or a list like 0,2,5") from None
    else:
        idx = [int(x) for x in keep]
    if not idx or any(i < 0 or i >= n for i in idx) or len(set(idx)) != len(idx):
        raise UserError(f"layer selection {keep!r} is not a set of layers in 0..{n - 1}")
    return sorted(idx)


def make_layer_subset_student(teacher, keep: str | Sequence[int] = "every_other"):
    """A student of the teacher's architecture with only the ``keep`` layers, initialised from them
    (embeddings, final norm and head copied). Works for GPT-2, Llama-family and BERT models."""
    import copy

    cfg = copy.deepcopy(teacher.config)
    n = _num_layers(cfg)
    idx = _keep_indices(keep, n)
    prefix = layer_list_name(teacher) + "."
    cfg.num_hidden_layers = len(idx)
    lt = getattr(cfg, "layer_types", None)
    if isinstance(lt, list) and len(lt) == n:
        cfg.layer_types = [lt[i] for i in idx]
    student = type(teacher)(cfg).to(dtype=teacher.dtype)
    new_sd = {}
    pos = {old: new for new, old in enumerate(idx)}
    for k, v in teacher.state_dict().items():
        if k.startswith(prefix):
            i, tail = k[len(prefix):].split(".", 1)
            if int(i) in pos:
                new_sd[f"{prefix}{pos[int(i)]}.{tail}"] = v.detach().clone()
        else:
            new_sd[k] = v.detach().clone()
    missing, unexpected = student.load_state_dict(new_sd, strict=False)
    if unexpected or [m for m in missing if not m.endswith(("lm_head.weight", "decoder.weight", "decoder.bias"))]:
        raise UserError(f"layer subset of {type(teacher).__name__}: weights do not map "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    student.tie_weights()
    return student


def _auto_class(model_or_config):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    cfg = getattr(model_or_config, "config", model_or_config)
    arch = " ".join(cfg.architectures or [])
    if "MaskedLM" in arch or type(model_or_config).__name__.endswith("ForMaskedLM"):
        return AutoModelForMaskedLM
    return AutoModelForCausalLM


def load_teacher(spec: str, device: str = "cpu"):
    """(model, tokenizer) for a model string (directory, hub id or built-in name such as ``smollm2``)."""
    from ..backends.hf import HFBackend

    be = HFBackend.from_spec(spec, device=device, dtype="float32")
    return be.model, be.tokenizer


def build_student(teacher, tokenizer, student: str | None, cfg: TrainConfig, device: str = "cpu"):
    """Return (student model, student tokenizer, kind) where kind is ``layers``, ``lora`` or ``model``."""
    import torch

    torch.manual_seed(cfg.seed)
    if student in (None, "", "layers", "every_other", "first_half") or (student or "").startswith("layers:"):
        keep = getattr(cfg, "keep", "every_other")
        if student and student.startswith("layers:"):
            keep = student.split(":", 1)[1]
        elif student in ("every_other", "first_half"):
            keep = student
        return make_layer_subset_student(teacher, keep).to(device), tokenizer, "layers"
    if student == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        task = TaskType.CAUSAL_LM if _auto_class(teacher).__name__.endswith("CausalLM") else None
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.lora_target, task_type=task)
        return get_peft_model(teacher, lcfg), tokenizer, "lora"
    model, tok = load_teacher(student, device=device)
    return model, tok, "model"


def check_same_tokenizer(t_tok, s_tok, teacher_model, student_model) -> None:
    """Distillation compares distributions token by token: the vocabularies must be identical."""
    tv, sv = t_tok.get_vocab(), s_tok.get_vocab()
    if tv != sv:
        diff = len(set(tv.items()) ^ set(sv.items()))
        raise UserError(f"teacher and student tokenizers differ ({len(tv)} vs {len(sv)} tokens, {diff} entries "
                        f"differ); distillation needs the same tokenizer")
    te = teacher_model.get_output_embeddings().weight.shape[0]
    se = student_model.get_output_embeddings().weight.shape[0]
    if te != se:
        raise UserError(f"teacher and student output sizes differ ({te} vs {se} logits)")


# -- data ----------------------------------------------------------------------------------------
def tokenize_corpus(texts: Sequence[str], tokenizer, max_length: int) -> list[dict[str, list[int]]]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, return_special_tokens_mask=True)
    rows = [{"input_ids": ids, "special_tokens_mask": sm}
            for ids, sm in zip(enc["input_ids"], enc["special_tokens_mask"]) if len(ids) >= 2]
    if not rows:
        raise UserError("every corpus example is shorter than two tokens")
    return rows


def make_collator(tokenizer, masked: bool, mlm_probability: float = 0.15):
    from transformers import DataCollatorForLanguageModeling

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if masked and tokenizer.mask_token is None:
        raise UserError("masked LM distillation needs a tokenizer with a mask token")
    return DataCollatorForLanguageModeling(tokenizer, mlm=masked, mlm_probability=mlm_probability)


# -- trainer -------------------------------------------------------------------------------------
def _trainer_base():
    from transformers import Trainer

    class DistillTrainerBase(Trainer):
        """Shared base of the distillation trainers: loss components are logged alongside ``loss``."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.loss_is_scaled_for_ga = False  # our losses are per-batch means: Trainer divides by GA
            self._parts: dict[str, float] = {}
            self._parts_n = 0

        def _record(self, **parts: float) -> None:
            for k, v in parts.items():
                self._parts[k] = self._parts.get(k, 0.0) + float(v)
            self._parts_n += 1

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if self._parts_n and "loss" in logs:
                import torch

                keys = sorted(self._parts)
                vals = torch.tensor([self._parts[k] / self._parts_n for k in keys], device=self.args.device)
                if self.args.world_size > 1:  # every rank logs at the same steps: mean over the ranks, as "loss"
                    vals = self.accelerator.reduce(vals, reduction="mean")
                for k, v in zip(keys, vals.tolist()):
                    logs[k] = round(v, 5)
                self._parts, self._parts_n = {}, 0
            super().log(logs, *args, **kwargs)

    return DistillTrainerBase


def make_fairdistill_trainer_class():
    import torch
    import torch.nn.functional as F

    Base = _trainer_base()

    class FairDistillTrainer(Base):
        """Trainer whose loss is the FairDistillation objective (see module docstring)."""

        def __init__(self, *args: Any, teacher=None, rules: RuleSet | None = None,
                     fd_config: FairDistillConfig | None = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.teacher = teacher  # None: LoRA student, the teacher is the model with its adapter disabled
            self.rules = rules
            self.fd = fd_config or FairDistillConfig()
            if teacher is not None:
                teacher.eval().requires_grad_(False)
                teacher.to(self.args.device)

        def _teacher_forward(self, model, inputs):
            with torch.no_grad():
                if self.teacher is not None:
                    return self.teacher(**inputs, output_hidden_states=True)
                peft_model = self.accelerator.unwrap_model(model)
                was = peft_model.training
                peft_model.eval()
                try:
                    with peft_model.disable_adapter():  # through the wrapper: FSDP needs its forward
                        return model(**inputs, output_hidden_states=True)
                finally:
                    peft_model.train(was)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            fd = self.fd
            inputs = {k: v for k, v in inputs.items() if k != "special_tokens_mask"}
            labels = inputs.pop("labels")
            out = model(**inputs, labels=labels, output_hidden_states=True)
            t_out = self._teacher_forward(model, inputs)
            mask = inputs["attention_mask"].bool()
            T = fd.temperature
            s_logp = torch.log_softmax(out.logits[mask].float() / T, dim=-1)
            t_logits = apply_rules(t_out.logits[mask].float() / T, self.rules, fd.rule_mode)
            t_logp = torch.log_softmax(t_logits, dim=-1)
            kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean") * (T * T)
            hs, ht = out.hidden_states[-1][mask].float(), t_out.hidden_states[-1][mask].float()
            cos = (1.0 - F.cosine_similarity(hs, ht, dim=-1)).mean() if hs.shape[-1] == ht.shape[-1] \
                else hs.new_zeros(())
            lm = out.loss if out.loss is not None else hs.new_zeros(())
            loss = fd.alpha_kl * kl + fd.alpha_lm * lm + fd.alpha_cos * cos
            extra = {}
            if fd.alpha_rule and self.rules is not None and len(self.rules):
                rule = rule_balance_loss(out.logits[mask], t_out.logits[mask], self.rules)
                loss = loss + fd.alpha_rule * rule
                extra["rule"] = rule.detach()
            self._record(kl=kl.detach(), lm=lm.detach(), cos=cos.detach(), **extra)
            return (loss, out) if return_outputs else loss

    return FairDistillTrainer


def rich_progress_callback():
    """A TrainerCallback that draws a rich progress bar (steps, loss) instead of tqdm."""
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def __init__(self) -> None:
            self.progress = None
            self.task = None

        def on_train_begin(self, args, state, control, **kw):
            if not state.is_world_process_zero:
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self.progress.start()
            self.task = self.progress.add_task("distill", total=state.max_steps, completed=state.global_step, info="")

        def on_step_end(self, args, state, control, **kw):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if self.progress is not None and logs and "loss" in logs:
                info = " ".join(f"{k}={logs[k]:.4g}" for k in ("loss", "kl", "lm", "cos") if k in logs)
                self.progress.update(self.task, info=info)

        def on_train_end(self, args, state, control, **kw):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    return RichProgress()


def _precision(cfg: TrainConfig, device: str) -> dict[str, bool]:
    import torch

    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "no"
    if mp == "fp16" and not device.startswith("cuda"):
        raise UserError("fp16 mixed precision needs a CUDA device")
    return {"bf16": mp == "bf16", "fp16": mp == "fp16"}


def training_arguments(out: str | Path, cfg: TrainConfig, device: str, **extra: Any):
    from transformers import TrainingArguments

    args = dict(
        output_dir=str(out), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, lr_scheduler_type="linear", warmup_steps=cfg.warmup,
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, logging_steps=cfg.logging_steps,
        seed=cfg.seed, data_seed=cfg.seed, report_to="none", disable_tqdm=True, remove_unused_columns=False,
        use_cpu=not device.startswith("cuda"), dataloader_num_workers=0, optim="adamw_torch",
        **_precision(cfg, device),
    )
    args.update(extra)
    return TrainingArguments(**args)


def _quiet(trainer) -> None:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)


def _resolve_device(device: str) -> str:
    from ..distributed import local_device

    return local_device(device)  # under accelerate launch / torchrun: this rank's GPU


@dataclass
class FairDistillJob:
    """Everything :func:`prepare_fairdistill` (or :func:`fairdistill.distill.cda.prepare_cda`) builds;
    :func:`train_job` runs it."""

    trainer: Any
    teacher: Any
    student: Any
    tokenizer: Any
    rules: RuleSet | None
    kind: str
    config: TrainConfig
    out: Path
    n_examples: int
    n_tokens: int
    meta: dict = field(default_factory=dict)
    #: the summary file train_job writes into ``out``, and fields it adds to the summary
    summary_file: str = "fairdistill.json"
    summary_extra: dict = field(default_factory=dict)


def prepare_fairdistill(teacher: Any, student: str | Any | None, rules: str | RuleSet | None, data: str | Sequence[str],
                        out: str | Path, *, callbacks: Sequence[Any] = (), **config: Any) -> FairDistillJob:
    """Build the teacher, student, rule set, corpus and Trainer without training (see
    :func:`run_fairdistill` for the arguments). ``teacher`` / ``student`` may also be loaded models
    (``student`` a model object, ``teacher`` a ``(model, tokenizer)`` pair); ``data`` a list of texts."""
    cfg = FairDistillConfig.from_kwargs(**config)
    device = _resolve_device(cfg.device)
    out = Path(out)
    # corpus first: an empty corpus is reported before any model loads
    texts = list(data) if not isinstance(data, (str, os.PathLike)) else read_corpus(data, cfg.max_examples)
    if not texts:
        raise UserError("corpus is empty")
    if isinstance(teacher, tuple):
        t_model, t_tok = teacher
        if student == "lora":  # peft wraps the model in place: keep the caller's teacher untouched
            import copy

            t_model = copy.deepcopy(t_model)
    else:
        t_model, t_tok = load_teacher(str(teacher), device=device)
    if student is not None and not isinstance(student, str):
        s_model, s_tok, kind = student, t_tok, "model"
    else:
        s_model, s_tok, kind = build_student(t_model, t_tok, student, cfg, device=device)
    check_same_tokenizer(t_tok, s_tok, t_model, s_model)
    ruleset = rules if (rules is None or isinstance(rules, RuleSet)) else load_rules(rules, t_tok, strict=cfg.strict_rules)
    masked = _auto_class(t_model).__name__.endswith("MaskedLM")
    rows = tokenize_corpus(texts, t_tok, cfg.max_length)
    n_tokens = sum(len(r["input_ids"]) for r in rows)
    Trainer = make_fairdistill_trainer_class()
    targs = training_arguments(out, cfg, device)
    trainer = Trainer(
        model=s_model, args=targs, train_dataset=rows,
        data_collator=make_collator(t_tok, masked, cfg.mlm_probability),
        teacher=None if kind == "lora" else t_model, rules=ruleset, fd_config=cfg,
        callbacks=list(callbacks),
    )
    _quiet(trainer)
    if cfg.progress:
        trainer.add_callback(rich_progress_callback())
    return FairDistillJob(trainer=trainer, teacher=t_model, student=s_model, tokenizer=t_tok, rules=ruleset, kind=kind,
                          config=cfg, out=out, n_examples=len(rows), n_tokens=n_tokens,
                          meta={"teacher": teacher if isinstance(teacher, str) else type(t_model).__name__,
                                "student": student if isinstance(student, (str, type(None))) else type(s_model).__name__,
                                "masked": masked, "device": device})


def last_checkpoint(out: str | Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out)) if Path(out).is_dir() else None


CLOCK_FILE = "train_clock.json"


def _clock_of(checkpoint: str | None) -> float:
    p = Path(checkpoint) / CLOCK_FILE if checkpoint else None
    return float(json.loads(p.read_text())["seconds"]) if p is not None and p.exists() else 0.0


def _clock_callback(t0: float, before: float):
    from transformers import TrainerCallback

    class TrainClock(TrainerCallback):
        """Writes the training seconds so far into each checkpoint (read back on resume)."""

        def on_save(self, args, state, control, **kw):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and ckpt.is_dir():
                (ckpt / CLOCK_FILE).write_text(json.dumps({"seconds": round(time.perf_counter() - t0 + before, 2)}))

    return TrainClock()


#: where a caller (a study) wants a line about a running training's progress: a function of one string,
#: called every ``JOURNAL_SECONDS`` of training, progress bars or not
train_journal: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("train_journal", default=None)
JOURNAL_SECONDS = 600.0


def wall_clock_callback(save_minutes: float, journal: Callable[[str], None] | None = None,
                        journal_seconds: float | None = None):
    """A TrainerCallback that checkpoints after ``save_minutes`` of training since the last save (CPU
    trainings run for hours and a session can end between two step-based saves; 0 = steps only) and
    sends ``journal`` a progress line (step, seconds per step, time left, loss) every
    ``journal_seconds``."""
    from transformers import TrainerCallback

    every = JOURNAL_SECONDS if journal_seconds is None else journal_seconds

    class WallClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = self.t_save = self.t_line = time.perf_counter()
            self.step0 = state.global_step

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            if save_minutes and now - self.t_save >= 60 * save_minutes:
                control.should_save = True
            if journal is not None and state.is_world_process_zero and now - self.t_line >= every:
                self.t_line = now
                per_step = (now - self.t0) / max(state.global_step - self.step0, 1)
                left = max(state.max_steps - state.global_step, 0) * per_step
                losses = [h["loss"] for h in state.log_history if "loss" in h]
                journal(f"step {state.global_step}/{state.max_steps}, {per_step:.1f} s per step, about "
                        f"{left / 60:.0f} min left" + (f", loss {losses[-1]:.4g}" if losses else ""))

        def on_save(self, args, state, control, **kw):
            self.t_save = time.perf_counter()

    return WallClock()


def train_job(job: FairDistillJob) -> dict[str, Any]:
    """Train (resuming from the last checkpoint in ``job.out`` if ``resume``), save the final student
    to ``out/student`` (LoRA: merged weights there, the adapter in ``out/adapter``) and a summary to
    ``out/<job.summary_file>`` (``fairdistill.json``); return the summary.

    Under ``accelerate launch`` / ``torchrun`` every rank trains its share of each global batch
    (DDP, FSDP or DeepSpeed, as accelerate is configured) and rank 0 alone writes the outputs;
    every rank returns the summary once they are on disk."""
    resume = last_checkpoint(job.out) if job.config.resume else None
    # seconds spent before the checkpoint we resume from (a session cut off mid-training), so that
    # train_seconds is the whole training's cost, not the last stretch's
    before = _clock_of(resume)
    t0 = time.perf_counter()
    trainer = job.trainer
    trainer.add_callback(_clock_callback(t0, before))
    trainer.add_callback(wall_clock_callback(job.config.save_minutes, train_journal.get()))
    result = trainer.train(resume_from_checkpoint=resume)
    elapsed = time.perf_counter() - t0 + before
    state = trainer.state
    student_dir = job.out / "student"
    main = trainer.is_world_process_zero()
    # sharded parameters (FSDP, DeepSpeed ZeRO-3) are gathered by save_model, on every rank
    sharded = bool(getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False))
    model = trainer.model
    if job.kind == "lora":
        trainer.save_model(str(job.out / "adapter"))
        if main and not sharded:  # sharded: the adapter alone (a study merges it into the base on load)
            merged = model.merge_and_unload()
            merged.save_pretrained(str(student_dir))
            job.student = merged
    else:
        trainer.save_model(str(student_dir))
    logs = [h for h in state.log_history if "loss" in h]
    summary = {
        "teacher": job.meta.get("teacher"), "student": job.meta.get("student"), "student_kind": job.kind,
        "masked_lm": job.meta.get("masked"), "device": job.meta.get("device"),
        "processes": trainer.args.world_size,
        "student_params": sum(p.numel() for p in model.parameters()) if job.kind != "lora" else None,
        "rules": job.rules.to_dict() if job.rules is not None else None,
        "config": asdict(job.config), "examples": job.n_examples, "corpus_tokens": job.n_tokens,
        "global_step": state.global_step, "resumed_from": resume, "train_seconds": round(elapsed, 2),
        "train_loss": getattr(result, "training_loss", None), "last_log": logs[-1] if logs else None,
        "loss_curve": [{k: h[k] for k in ("step", "loss", "kl", "lm", "cos", "rule") if k in h} for h in logs],
        "out": str(job.out / "adapter" if job.kind == "lora" and sharded else student_dir), **job.summary_extra,
    }
    if main:
        job.tokenizer.save_pretrained(summary["out"])
        job.out.mkdir(parents=True, exist_ok=True)
        (job.out / job.summary_file).write_text(json.dumps(summary, indent=2, default=str))
    trainer.accelerator.wait_for_everyone()
    return summary


def run_fairdistill(teacher: str, student: str | None, rules: str | None, data: str, out: str, **config: Any) -> dict:
    """FairDistillation: distil ``teacher`` into a student through rule-rewritten distributions.

    Arguments:
        teacher: model string (local directory, hub id, or built-in name such as ``smollm2``);
            a masked LM (BERT family) or a causal LM.
        student: ``None`` / ``"every_other"`` (default: teacher architecture with every other layer,
            initialised from the kept layers), ``"first_half"``, ``"layers:0,2,5"``, ``"lora"`` (the
            teacher plus a LoRA adapter; saved merged), or a model string with the same tokenizer.
        rules: rules file (YAML/JSON, see :mod:`fairdistill.distill.rules`) or a shipped name
            (``gender``, ``he_she``); ``None`` distils without rules (the control).
        data: corpus: plain text (one example per line), jsonl with a ``text`` field, or a built-in
            corpus name (``occupations``: see :mod:`fairdistill.distill.corpora`).
        out: output folder: ``checkpoint-*`` (resume points), ``student/`` (final model + tokenizer,
            loadable with ``--model out/student``), ``adapter/`` (LoRA only), ``fairdistill.json``.
        **config: any :class:`FairDistillConfig` field: temperature (2.0), alpha_kl (5.0), alpha_lm
            (2.0), alpha_cos (1.0), alpha_rule (0.0: the rule-balance extension, off), rule_mode
            (logit|prob), learning_rate (2e-5), warmup (0.1),
            weight_decay, batch_size (8), grad_accum (1), epochs (1), max_steps, max_length (128),
            max_examples, mlm_probability (0.15), save_steps (500), save_minutes (10: also checkpoint by
            training time), save_total_limit (2),
            logging_steps, seed, mixed_precision (auto|no|bf16|fp16), resume (True), progress,
            device (auto|cpu|cuda), keep, lora_r/lora_alpha/lora_dropout/lora_target, strict_rules.

    Returns the summary also written to ``out/fairdistill.json`` (steps, losses, rule warnings).
    Errors (bad rules file, empty corpus, tokenizer mismatch, unknown option) are one-line UserErrors.
    """
    job = prepare_fairdistill(teacher, student, rules, data, out, **config)
    return train_job(job)


# -- probes --------------------------------------------------------------------------------------
def token_log_ratios(model, tokenizer, texts: Sequence[str], a: str = "he", b: str = "she") -> list[float]:
    """log P(a) - log P(b) for each probe text, for causal LMs (next token after the text; ``a`` is
    looked up as the mid-sentence token " a") and masked LMs (at the text's mask token, which may be
    written ``[MASK]``). Each word must be a single token for this tokenizer."""
    import torch

    from .rules import word_token_ids

    ia, ib = word_token_ids(tokenizer, " " + a), word_token_ids(tokenizer, " " + b)
    if len(ia) != 1 or len(ib) != 1:
        raise UserError(f"probe words {a!r}/{b!r} are not single tokens for this tokenizer")
    masked = _auto_class(model).__name__.endswith("MaskedLM")
    dev = next(model.parameters()).device
    out = []
    was = model.training
    model.eval()
    with torch.no_grad():
        for t in texts:
            if masked:
                t = t.replace("[MASK]", tokenizer.mask_token)
                enc = tokenizer(t, return_tensors="pt").to(dev)
                pos = (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero()
                if len(pos) != 1:
                    raise UserError(f"masked probe needs exactly one mask token: {t!r}")
                logits = model(**enc).logits[0, int(pos[0])]
            else:
                enc = tokenizer(t, return_tensors="pt").to(dev)
                logits = model(**enc).logits[0, -1]
            lp = torch.log_softmax(logits.float(), -1)
            out.append(float(lp[ia[0]] - lp[ib[0]]))
    model.train(was)
    return out


def ratio_summary(values: Sequence[float]) -> dict[str, float]:
    """mean, mean |.|, spread (max - min) and standard deviation of a list of log-ratios."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / max(n - 1, 1))
    return {"mean": round(mean, 4), "mean_abs": round(sum(abs(v) for v in values) / n, 4),
            "spread": round(max(values) - min(values), 4), "sd": round(sd, 4), "n": n}


__all__ = ["TrainConfig", "FairDistillConfig", "FairDistillJob", "make_layer_subset_student", "build_student", "prepare_fairdistill",
           "train_job", "train_journal", "wall_clock_callback", "run_fairdistill", "read_corpus", "token_log_ratios", "ratio_summary",
           "check_same_tokenizer", "make_fairdistill_trainer_class", "rich_progress_callback"]
