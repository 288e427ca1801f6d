"""Counterfactual data augmentation (CDA; Lu et al. 2020, Webster et al. 2020, as compared in Meade et al. 2022).

Every corpus sentence that names a gendered word gets a counterfactual twin with the words of each
(male, female) pair swapped; *two-sided* CDA trains on the originals and the twins together. The
model is then fine-tuned on that corpus with its own language-modelling loss (next-token for causal
LMs, 15% MLM for masked LMs), LoRA or full, with FairDistillation's training options, corpus loading,
Trainer, checkpoints and resume (:mod:`fairdistill.distill.fairdistill`).

How words are swapped (:class:`Swapper`):

- Word pairs come from the shared lists (``../shared/data/gender_word_lists``): ``bias_bench``
  (default; Meade et al.'s CDA list, 57 pairs), ``cda`` (Lu et al.'s 124 pairs), ``names`` (1,000
  first-name pairs of Hall Maudslay et al.), or a file of your own (JSON list of [male, female]
  pairs, or one ``male<TAB>female`` pair a line). A word listed twice keeps its first partner
  (bias_bench: girl -> boy, lady -> gentleman, guy -> gal).
- Whole words only, case-insensitively: "he" in "the", "hers" in "others", "man" in "manager" and
  "son" in "son-in-law" stay (a hyphenated compound changes only when it is listed itself).
- Case follows the original: he -> she, He -> She, HE -> SHE.
- Plurals: the lists hold most; a pair whose plural is missing gets one by regular English rules
  (nephew/niece -> nephews/nieces, -man -> -men, -y -> -ies, -s/-x/-ch/-sh -> -es), names excepted.
- Possessives and contractions keep their suffix: man's -> woman's, boys' -> girls', he's -> she's.
- Pronouns, whatever the lists say: he <-> she, himself <-> herself, him -> her, hers -> his;
  "his" -> "hers" at the end of a clause (next comes punctuation or nothing: "the book is his."),
  else "her" ("his book" -> "her book"); "her" -> "him" when the next word is punctuation, nothing
  or a function word (a preposition, conjunction, determiner, pronoun, adverb or a verb after
  let/make/help: "I saw her.", "gave her the keys", "told her that", "let her go"), else "his"
  ("her book" -> "his book"). A tagger would do better on rare constructions; this rule is
  deterministic and has no dependency.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..errors import UserError
from .fairdistill import (FairDistillJob, TrainConfig, _auto_class, _quiet, _resolve_device, build_student, load_teacher,
                          make_collator, read_corpus, rich_progress_callback, tokenize_corpus, train_job,
                          training_arguments)

from ..text.corpora import WINOBIAS_FILES, load_texts  # noqa: F401,E402
from ..text.counterfactual import (  # noqa: F401,E402
    MALE_PRONOUNS, OBJECT_CONTEXT, PRONOUNS, WORD_LISTS, Swapper, load_word_pairs, plural)


# -- training --------------------------------------------------------------------------------------
@dataclass
class CDAConfig(TrainConfig):
    """Options of :func:`run_cda`: the shared training budget (:class:`TrainConfig`) plus the word lists."""

    word_lists: str = "bias_bench"    # comma-separated names (bias_bench, cda, names) or files of [male, female] pairs

    what: ClassVar[str] = "cda"


def prepare_cda(model: str | tuple, data: str | Sequence[str], out: str | Path, *, student: str = "lora",
                **config: Any) -> FairDistillJob:
    """Build the augmented corpus, the model (``student``: ``lora`` or ``full``) and the Trainer without
    training; see :func:`run_cda`."""
    cfg = CDAConfig.from_kwargs(**config)
    if student not in ("lora", "full"):
        raise UserError(f"cda student {student!r}: use lora (an adapter, saved merged) or full (every weight)")
    device = _resolve_device(cfg.device)
    texts = list(data) if not isinstance(data, (str, os.PathLike)) else load_texts(data, cfg.max_examples)
    swapper = Swapper.from_lists(cfg.word_lists)
    corpus, n_swapped = swapper.augment(texts)
    if not n_swapped:
        raise UserError(f"no corpus sentence holds a word of the lists {cfg.word_lists}: nothing to augment")
    if isinstance(model, tuple):
        base, tok = model
    else:
        base, tok = load_teacher(str(model), device=device)
    if student == "lora":
        trained, _, kind = build_student(base, tok, "lora", cfg, device=device)
    else:
        import torch

        torch.manual_seed(cfg.seed)
        trained, kind = base, "full"
    masked = _auto_class(base).__name__.endswith("MaskedLM")
    rows = tokenize_corpus(corpus, tok, cfg.max_length)
    from transformers import Trainer

    trainer = Trainer(model=trained, args=training_arguments(out, cfg, device), train_dataset=rows,
                      data_collator=make_collator(tok, masked, cfg.mlm_probability))
    _quiet(trainer)
    if cfg.progress:
        trainer.add_callback(rich_progress_callback())
    name = model if isinstance(model, str) else type(base).__name__
    return FairDistillJob(trainer=trainer, teacher=None, student=trained, tokenizer=tok, rules=None, kind=kind,
                          config=cfg, out=Path(out), n_examples=len(rows), n_tokens=sum(len(r["input_ids"]) for r in rows),
                          meta={"teacher": name, "student": student, "masked": masked, "device": device},
                          summary_file="cda.json",
                          summary_extra={"method": "cda", "word_lists": swapper.sources, "original_examples": len(texts),
                                         "counterfactual_examples": n_swapped})


def run_cda(model: str, data: str, out: str, *, student: str = "lora", **config: Any) -> dict:
    """Two-sided CDA fine-tuning of ``model`` on ``data`` (a text/jsonl corpus or ``winobias``).

    ``student``: ``lora`` (default; the adapter is saved in ``out/adapter`` and merged into
    ``out/student``) or ``full``. ``**config``: any :class:`CDAConfig` field — ``word_lists`` and the
    options FairDistillation shares (``max_steps``, ``learning_rate``, ``batch_size``, ``max_length``,
    ``max_examples``, ``lora_*``, ``seed``, ``resume``...). Rerun with the same ``out`` to resume.
    Returns the summary written to ``out/cda.json`` (steps, seconds, examples before and after augmentation).
    """
    return train_job(prepare_cda(model, data, out, student=student, **config))


__all__ = ["Swapper", "CDAConfig", "load_word_pairs", "load_texts", "prepare_cda", "run_cda", "plural"]
