"""Option-order control for multiple-choice benchmarks in generation mode.

``permute=cyclic`` asks each item once per rotation of its options; each answer is mapped back to
the option it names, and the prediction is the majority over rotations. Ties (e.g. three
rotations naming three options) are broken by the option log-probabilities summed over rotations
when the backend can score the answer letter, and otherwise reported as ``unresolved`` (they count
as incorrect, like an unparsed answer).

An *order* lists, for each display position, the index of the original option shown there:
``order[d] = option``. Rotation ``r`` of ``n`` options shows option ``(d + r) % n`` at position ``d``.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

from ..errors import UserError

MODES = ("none", "cyclic")


def orders(n: int, mode: str) -> list[list[int]]:
    """Display orders for ``n`` options: the identity, or every cyclic rotation."""
    if mode == "none":
        return [list(range(n))]
    if mode == "cyclic":
        return [[(d + r) % n for d in range(n)] for r in range(n)]
    raise UserError(f"unknown permute mode {mode!r}; use {' or '.join(MODES)}")


def majority(options: Sequence[int | None], tie_scores: Sequence[float] | None = None) -> tuple[int | None, str]:
    """Majority option over rotations and how it was reached.

    ``tie_scores``: per original option, the summed log-probability over rotations (or None when the
    backend cannot score). Returns ``(option, how)``, ``how`` in "unanimous", "majority",
    "tie_logprob", "unresolved", "none_parsed".
    """
    votes = Counter(o for o in options if o is not None)
    if not votes:
        return None, "none_parsed"
    ranked = votes.most_common()
    top = [o for o, c in ranked if c == ranked[0][1]]
    if len(top) == 1:
        return top[0], "unanimous" if len(votes) == 1 and None not in options else "majority"
    if tie_scores is None:
        return None, "unresolved"
    return max(top, key=lambda o: tie_scores[o]), "tie_logprob"
