"""Position (letter) bias of multiple-choice answers.

Input: one entry per answer given: the letter position the model chose (``None`` when the answer
was not parsed), the letter position of the gold answer in that prompt, and the item the answer
belongs to (several answers per item under option permutation). Items are the resampling unit, so
the rotations of one item stay together in every bootstrap resample.

Figures (all with a 95% percentile bootstrap CI over items, 1,000 seeded resamples):

* ``letter_share``: share of parsed answers at each letter, beside ``gold_share``, the share of
  gold answers at that letter over the same answers. A model without position preference and with
  perfect accuracy matches the gold shares.
* ``position_bias``: for the most frequent letter, its answer share divided by its gold share
  (1 = no excess; 2 = chosen twice as often as it is right). The letter is fixed from the full
  data; the CI resamples items with that letter held fixed.
* ``rotation_consistency`` (only with several rotations): share of items whose parsed answers in
  all rotations name the same option.

``skew_warning`` returns one line when a letter takes more than twice its gold share.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from .bootstrap import resample_indices

__all__ = ["position_metrics", "skew_warning", "attach", "DEFINITIONS"]

DEFINITIONS = {
    "letter_share": "share of parsed answers given at this letter position (gold_share: share of gold answers "
                    "at this position over the same answers); range 0..1",
    "position_bias": "answer share of the most frequent letter divided by its gold share: 1 = no position "
                     "preference, >1 = the letter is chosen more often than it is right; lower is better",
    "rotation_consistency": "share of items whose answers name the same option in every rotation of the "
                            "options (permute=cyclic); 0..1, higher is better",
}

SKEW_FACTOR = 2.0


def _ci(boot: np.ndarray) -> tuple[float | None, float | None]:
    b = boot[~np.isnan(boot)]
    if not b.size:
        return None, None
    lo, hi = np.quantile(b, [0.025, 0.975])
    return float(lo), float(hi)


def position_metrics(
    chosen: Sequence[int | None],
    gold: Sequence[int],
    item: Sequence[Any],
    option: Sequence[int | None] | None = None,
    n_letters: int = 3,
    letters: str = "ABCDEFGHIJ",
    n_boot: int = 1000,
    seed: int = 0,
    advice: str | None = None,
) -> dict[str, Any]:
    """Letter distribution, position-bias figure and (with ``option``) rotation consistency.

    ``option`` gives, per answer, the underlying option chosen (for consistency across rotations);
    ``advice`` replaces the warning's closing advice.
    Returns ``{"rows": [...], "letters": {...}, "warning": str | None}``.
    """
    if not (len(chosen) == len(gold) == len(item)):
        raise ValueError("chosen, gold and item must have the same length")
    # items x letters count matrices, so one resample of items sums rows
    ids: dict[Any, int] = {}
    for it in item:
        ids.setdefault(it, len(ids))
    n_items = len(ids)
    ans = np.zeros((n_items, n_letters))
    gol = np.zeros((n_items, n_letters))
    per_item_opts: dict[int, list[int | None]] = defaultdict(list)
    for k, (c, g, it) in enumerate(zip(chosen, gold, item)):
        i = ids[it]
        if option is not None:
            per_item_opts[i].append(option[k])
        if c is None:
            continue
        ans[i, int(c)] += 1
        gol[i, int(g)] += 1
    rows: list[dict[str, Any]] = []
    total = ans.sum()
    out: dict[str, Any] = {"rows": rows, "letters": {}, "warning": None, "definitions": dict(DEFINITIONS)}
    if n_items == 0 or total == 0:
        return out
    rs = resample_indices(n_items, n_boot, seed)
    a_b = ans[rs].sum(1)  # (n_boot, n_letters)
    g_b = gol[rs].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share_b = a_b / a_b.sum(-1, keepdims=True)
        gshare_b = g_b / g_b.sum(-1, keepdims=True)
    share = ans.sum(0) / total
    gshare = gol.sum(0) / total
    n_parsed = int(total)
    for j in range(n_letters):
        lo, hi = _ci(share_b[:, j])
        rows.append({"metric": "letter_share", "letter": letters[j], "value": float(share[j]),
                     "ci_low": lo, "ci_high": hi, "gold_share": float(gshare[j]), "n": n_parsed})
        out["letters"][letters[j]] = {"answers": int(ans[:, j].sum()), "gold": int(gol[:, j].sum())}
    top = int(np.argmax(share))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio_b = share_b[:, top] / gshare_b[:, top]
    ratio_b[~np.isfinite(ratio_b)] = np.nan
    ratio = float(share[top] / gshare[top]) if gshare[top] > 0 else None
    lo, hi = _ci(ratio_b)
    rows.append({"metric": "position_bias", "letter": letters[top], "value": ratio, "ci_low": lo, "ci_high": hi,
                 "gold_share": float(gshare[top]), "n": n_parsed})
    if option is not None and any(len(v) > 1 for v in per_item_opts.values()):
        cons = np.array([float(all(o is not None for o in per_item_opts[i]) and len(set(per_item_opts[i])) == 1)
                         for i in range(n_items)])
        lo, hi = _ci(cons[rs].mean(-1))
        rows.append({"metric": "rotation_consistency", "letter": None, "value": float(cons.mean()),
                     "ci_low": lo, "ci_high": hi, "n": n_items})
    out["warning"] = skew_warning(share, gshare, letters, advice)
    return out


PERMUTE_ADVICE = "rerun with -o permute=cyclic to control for answer order"


def skew_warning(share: Sequence[float], gold_share: Sequence[float], letters: str = "ABCDEFGHIJ",
                 advice: str | None = None) -> str | None:
    """One line when a letter takes more than SKEW_FACTOR times its share among gold answers."""
    worst = None
    for j, (s, g) in enumerate(zip(share, gold_share)):
        excess = s / g if g > 0 else (float("inf") if s > 0 else 0.0)
        if excess > SKEW_FACTOR and (worst is None or excess > worst[1]):
            worst = (j, excess)
    if worst is None:
        return None
    j = worst[0]
    right = f"is right on {_pct(gold_share[j])} ({worst[1]:.1f}x)" if gold_share[j] > 0 else "is never right"
    return f"position bias: letter {letters[j]} takes {_pct(share[j])} of answers but {right}; {advice or PERMUTE_ADVICE}"


def _pct(x: float) -> str:
    """A share as a whole percentage, with one decimal where rounding would print 0% or 100% for what is not."""
    whole = f"{x:.0%}"
    return f"{x:.1%}" if whole in ("0%", "100%") and 0 < x < 1 else whole


def attach(metrics: dict[str, Any], pos: dict[str, Any] | None, title: str, note: str) -> None:
    """File a :func:`position_metrics` result under ``metrics["position"]`` (where the CLI and the
    report look for it), its definitions beside the benchmark's."""
    if pos is None:
        return
    metrics["definitions"].update(pos.pop("definitions"))
    metrics["position"] = {"title": title, "note": note, **pos}
