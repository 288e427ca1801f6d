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

import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Sequence

from ..errors import UserError
from .fairdistill import (FairDistillJob, TrainConfig, _auto_class, _quiet, _resolve_device, build_student, load_teacher,
                          make_collator, read_corpus, rich_progress_callback, tokenize_corpus, train_job,
                          training_arguments)

#: named lists in ``gender_word_lists`` (file, JSON key or None), all [male, female]
WORD_LISTS = {
    "bias_bench": ("bias_bench/bias_attribute_words.json", "gender"),
    "cda": ("counterfactual_data_substitution/cda_default_pairs.json", None),
    "names": ("counterfactual_data_substitution/names_pairs_1000_scaled.json", None),
}
#: swapped by the pronoun rule below, not by the lists
PRONOUNS = {"he": "she", "she": "he", "himself": "herself", "herself": "himself", "him": "her", "hers": "his",
            "his": None, "her": None}
MALE_PRONOUNS = {"he", "him", "his", "himself"}
#: after "her", these make it an object ("him"); anything else makes it a possessive ("his")
OBJECT_CONTEXT = frozenset("""
to in on at for with about from by of into onto over under after before during through like as than around off up
down out back away across along against toward towards behind beside near upon within without
and or but because so that if when while until since though although whether nor then
the a an this these those some any no every each all both another his her my your our their its
it them me us him you too again very now today yesterday tomorrow here there anymore home well how what why where
who whom which not never already just first last once twice alone still even either enough more most much
be go do know feel see think come have get make take leave stay talk speak try work win walk sleep eat
is was are were will would can could should may might must has had does did
""".split())


def plural(word: str) -> str:
    """Regular English plural of a singular noun (irregular ones come from the lists)."""
    if word.endswith("man"):
        return word[:-3] + "men"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    return word + "s"


def _is_plural(word: str) -> bool:
    return word.endswith("men") or (word.endswith("s") and not word.endswith(("ss", "us", "is")))


def load_word_pairs(source: str, root: Path | None = None) -> list[tuple[str, str]]:
    """(male, female) pairs of a named list or a file; a malformed file is a one-line UserError."""
    if source in WORD_LISTS:
        from ..data import find_dataset

        rel, key = WORD_LISTS[source]
        path = (root or find_dataset("gender_word_lists")) / rel
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"unknown word list {source!r}: neither {', '.join(WORD_LISTS)} nor a file")
        key = None
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        rows = data.get(key) if key and isinstance(data, dict) else data
        rows = rows if isinstance(rows, list) else []
        where = [f"{path}: entry {k}" for k in range(len(rows))]
    else:
        rows, where = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                rows.append(line.split("\t"))
                where.append(f"{path}:{n}")
    if not rows:
        raise UserError(f"{path}: no word pairs found")
    pairs = []
    for row, w in zip(rows, where):
        if not (isinstance(row, list) and len(row) == 2 and all(isinstance(x, str) and x.strip() for x in row)):
            raise UserError(f"{w}: expected a [male, female] pair of words, got {row!r}")
        pairs.append((row[0].strip().lower(), row[1].strip().lower()))
    return pairs


@dataclass
class Swapper:
    """Swaps gendered words both ways (see the module docstring for the rules)."""

    mapping: dict[str, str]           # lower-case word -> partner (pronouns excluded)
    gender: dict[str, str]            # lower-case word -> "male" | "female" (pronouns included)
    sources: list[str] = field(default_factory=list)

    @classmethod
    def from_lists(cls, sources: str | Sequence[str] = "bias_bench", root: Path | None = None) -> "Swapper":
        names = [n for n in ([s.strip() for s in sources.split(",")] if isinstance(sources, str) else list(sources)) if n]
        if not names:
            raise UserError("no word lists given")
        mapping: dict[str, str] = {}
        gender = {w: ("male" if w in MALE_PRONOUNS else "female") for w in PRONOUNS}
        for src in names:
            pairs = load_word_pairs(src, root)
            made = set() if src == "names" else {(plural(m), plural(f)) for m, f in pairs
                                                 if not _is_plural(m) and not _is_plural(f)}
            for m, f in pairs + sorted(made):
                if m in PRONOUNS or f in PRONOUNS or m == f:
                    continue
                if (m, f) in made and (m in mapping or f in mapping):
                    continue  # a listed plural (or partner) wins over a generated one
                mapping.setdefault(m, f)
                mapping.setdefault(f, m)
                gender.setdefault(m, "male")
                gender.setdefault(f, "female")
        return cls(mapping, gender, names)

    @cached_property
    def pattern(self) -> re.Pattern:
        words = sorted(set(self.mapping) | set(PRONOUNS), key=len, reverse=True)
        return re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, words)) + r")(?![\w-])", re.IGNORECASE)

    def swap(self, text: str) -> str:
        return self.swap_counted(text)[0]

    def swap_counted(self, text: str) -> tuple[str, int, int]:
        """The counterfactual of ``text`` and how many male and female words the original has."""
        counts = {"male": 0, "female": 0}

        def repl(m: re.Match) -> str:
            word = m.group(1)
            low = word.lower()
            counts[self.gender[low]] += 1
            new = self._partner(low, text[m.end():])
            if word.isupper() and len(word) > 1:
                return new.upper()
            if word[0].isupper():
                return new[0].upper() + new[1:]
            return new

        out = self.pattern.sub(repl, text)
        return out, counts["male"], counts["female"]

    def _partner(self, low: str, after: str) -> str:
        if low in PRONOUNS:
            nxt = re.match(r"\s*([A-Za-z]+)", after)
            ends_clause = nxt is None  # punctuation or the end of the text comes next
            if low == "his":
                return "hers" if ends_clause else "her"
            if low == "her":
                return "him" if ends_clause or nxt.group(1).lower() in OBJECT_CONTEXT else "his"
            return PRONOUNS[low]
        return self.mapping[low]

    def augment(self, texts: Sequence[str]) -> tuple[list[str], int]:
        """Two-sided CDA: the texts followed by the counterfactual of every text that changes; and how many changed."""
        new = [t2 for t, t2 in zip(texts, map(self.swap, texts)) if t2 != t]
        return list(texts) + new, len(new)


# -- corpora -----------------------------------------------------------------------------------------
WINOBIAS_FILES = ("pro_stereotyped_type1.txt.dev", "anti_stereotyped_type1.txt.dev",
                  "pro_stereotyped_type2.txt.dev", "anti_stereotyped_type2.txt.dev")


def load_texts(spec: str | os.PathLike, max_examples: int | None = None) -> list[str]:
    """Sentences of a corpus: a text/jsonl file (:func:`read_corpus`) or ``winobias``, the 1,584 WinoBias
    dev sentences (Zhao et al. 2018) with their line numbers and coreference brackets removed."""
    if str(spec) != "winobias":
        return read_corpus(spec, max_examples)
    from ..data import find_dataset

    root = find_dataset("winobias")
    texts = []
    for name in WINOBIAS_FILES:
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            t = re.sub(r"^\d+\s+", "", line).replace("[", "").replace("]", "").strip()
            if t:
                texts.append(t)
    return texts[:max_examples] if max_examples is not None else texts


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
