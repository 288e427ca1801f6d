"""Built-in training corpora, named where a corpus file is expected (``data: occupations``).

``occupations``: neutral sentences about WinoBias's occupations (no pronouns), leaving out the
held-out occupations of the ``occupation-pronouns`` probe and every occupation that contains one of
their words ("aircraft mechanic"), so that the probe measures generalisation, not memorisation.
``occupations-wide`` also covers the occupation-gender probe's 40 occupations (minus the held-out ones).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from ..benchmarks.occupation_pronouns import HELD_OUT

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
