"""Built-in training corpora, named where a corpus file is expected (``data: occupations``).

``occupations``: neutral sentences about WinoBias's occupations (no pronouns), leaving out the
held-out occupations of the ``occupation-pronouns`` probe and every occupation that contains one of
their words ("aircraft mechanic"), so that the probe measures generalisation, not memorisation.
``occupations-wide`` also covers the occupation-gender probe's 40 occupations (minus the held-out ones).
"""
from __future__ import annotations

import csv
from pathlib import Path
import os
import re
from typing import Callable

from ..errors import UserError


#: the occupation-pronouns probe's held-out occupations, which no built-in corpus mentions
HELD_F = ["nurse", "secretary", "librarian", "hairdresser", "receptionist"]
HELD_M = ["engineer", "mechanic", "carpenter", "sheriff", "physician"]
HELD_OUT = HELD_F + HELD_M
TEMPLATES = [
    "The {o} said that the meeting was moved to Friday.",
    "The {o} told me that the report was finished.",
    "The {o} thinks that the new schedule works well.",
    "Yesterday the {o} said that the office would close early.",
    "The {o} said that it was raining outside.",
    "The {o} explained that the budget had been approved.",
    "Our {o} mentioned that the train was late again.",
    "The {o} said that everyone should bring a coat.",
    "The {o} told the visitors that lunch was ready.",
    "I heard the {o} say that the project is on time.",
]


def winobias_occupations() -> tuple[list[str], list[str]]:
    """WinoBias's female- and male-stereotyped occupation lists (from the data folder)."""
    from ..data import find_dataset

    d = find_dataset("winobias")
    f = [x.strip() for x in (d / "female_occupations.txt").read_text().splitlines() if x.strip()]
    m = [x.strip() for x in (d / "male_occupations.txt").read_text().splitlines() if x.strip()]
    return f, m


def occupation_corpus(wide: bool = False) -> tuple[list[str], list[str], list[str]]:
    """(sentences, training occupations, held-out occupations); see the module docstring."""
    f, m = winobias_occupations()
    probe: list[str] = []
    if wide:
        table = Path(__file__).resolve().parent.parent / "benchmarks" / "occupations.csv"
        rows = [ln for ln in table.read_text().splitlines() if ln and not ln.startswith("#")]
        probe = [r["occupation"] for r in csv.DictReader(rows)]
    train: list[str] = []
    for o in f + m + probe:
        if o not in train and not any(h in o.split() for h in HELD_OUT):
            train.append(o)
    return [t.format(o=o) for o in train for t in TEMPLATES], train, list(HELD_OUT)


CORPORA: dict[str, Callable[[], list[str]]] = {
    "occupations": lambda: occupation_corpus()[0],
    "occupations-wide": lambda: occupation_corpus(wide=True)[0],
}


def read_corpus(path: str | os.PathLike, max_examples: int | None = None) -> list[str]:
    """Texts from a plain-text file (one example per non-empty line), a jsonl file (``text`` field), or a
    built-in corpus named in :data:`fairdistill.distill.corpora.CORPORA` (e.g. ``occupations``)."""
    from ..data import read_jsonl
    
    p = Path(path).expanduser()
    if not p.exists() and str(path) in CORPORA:
        return CORPORA[str(path)]()[:max_examples]
    if not p.exists():
        raise UserError(f"corpus not found: {p} (built-in corpora: {', '.join(CORPORA)})")
    texts: list[str] = []
    if p.suffix == ".jsonl":
        for k, row in enumerate(read_jsonl(p), 1):
            if "text" not in row or not isinstance(row["text"], str):
                raise UserError(f"{p}: row {k} has no string field 'text'")
            if row["text"].strip():
                texts.append(row["text"])
    else:
        with p.open(encoding="utf-8") as f:
            texts = [ln.rstrip("\n") for ln in f if ln.strip()]
    if max_examples is not None:
        texts = texts[:max_examples]
    if not texts:
        raise UserError(f"corpus {p} is empty (no non-blank lines / 'text' rows)")
    return texts


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
