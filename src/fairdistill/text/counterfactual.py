"""Counterfactual word swaps (he <-> she, names, gendered nouns): counterfactual data augmentation (CDA) trains on
them, the projection interventions estimate their bias directions from them."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

from ..errors import UserError

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
