"""Option-order control for multiple-choice benchmarks in generation mode.

``permute=cyclic`` asks each item once per rotation of its options; each answer is mapped back to
the option it names, and the prediction is the majority over rotations. Ties (e.g. three
rotations naming three options) are broken by the option log-probabilities summed over rotations
when the backend can score the answer letter, and otherwise reported as ``unresolved`` (they count
as incorrect, like an unparsed answer).

``permute=pride`` (PriDe, Zheng et al., ICLR 2024, "Large Language Models Are Not Robust Multiple Choice
Selectors") controls position at one call per item: the model's prior over option letters is estimated on a
small seeded sample of items asked under every rotation (per item, the softmax over letters of the mean
log-probability across rotations, where each option visits each letter once; the prior is the mean over the
sample), and every item, asked once in its original order, is predicted by its letter probabilities divided
by that prior. It needs the letter log-probabilities of a chat turn.

An *order* lists, for each display position, the index of the original option shown there:
``order[d] = option``. Rotation ``r`` of ``n`` options shows option ``(d + r) % n`` at position ``d``.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

from ..errors import UserError

MODES = ("none", "cyclic", "pride")


def orders(n: int, mode: str) -> list[list[int]]:
    """Display orders for ``n`` options: the identity, or every cyclic rotation."""
    if mode == "none":
        return [list(range(n))]
    if mode == "cyclic":
        return [[(d + r) % n for d in range(n)] for r in range(n)]
    if mode == "pride":  # asked in the original order; the prior's sample is asked in every rotation separately
        return [list(range(n))]
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


def _normalise(lps: Sequence[float]) -> list[float]:
    """Log-probabilities renormalised over the option letters (log-softmax of the letters' log-probs)."""
    m = max(lps)
    z = m + math.log(sum(math.exp(x - m) for x in lps))
    return [x - z for x in lps]


def pride_prior(rotations: Sequence[Sequence[Sequence[float]]]) -> list[float]:
    """PriDe's prior over letters: ``rotations[item][rotation][letter]`` are letter log-probs of one sample item
    asked in every cyclic rotation. Per item, softmax over letters of the mean (over rotations) of the letters'
    normalised log-probs; the prior is the mean of the items' priors."""
    if not rotations:
        raise UserError("PriDe needs at least one sample item to estimate the letter prior")
    n = len(rotations[0][0])
    total = [0.0] * n
    for item in rotations:
        normed = [_normalise(r) for r in item]
        mean = [sum(r[d] for r in normed) / len(normed) for d in range(n)]
        for d, p in enumerate(math.exp(x) for x in _normalise(mean)):
            total[d] += p
    return [t / len(rotations) for t in total]


def pride_choice(lps: Sequence[float], prior: Sequence[float]) -> int:
    """The letter PriDe predicts: argmax of the observed letter probability divided by the prior."""
    normed = _normalise(lps)
    return max(range(len(normed)), key=lambda d: normed[d] - math.log(max(prior[d], 1e-12)))


def pride_sample(ids: Sequence[str], share: float, minimum: int, seed: int) -> list[str]:
    """The seeded sample of item ids whose rotations estimate the prior: ``share`` of them, at least ``minimum``."""
    import random

    k = min(len(ids), max(minimum, math.ceil(share * len(ids))))
    return sorted(random.Random(f"pride-{seed}").sample(list(ids), k))
