"""Vectorised percentile bootstrap confidence intervals.

One resample index matrix of shape ``(n_resamples, n)`` is drawn with ``numpy.random.default_rng(seed)``
(the same draw ``scipy.stats.bootstrap(..., method="percentile", paired=True, rng=default_rng(seed))``
makes, so the two agree exactly without strata). Every data array is indexed with the same matrix
(paired resampling: the arrays are columns of one table of items). ``statistic_fn`` receives the
resampled arrays, each of shape ``(n_resamples, n)``, and must return one value per resample
(shape ``(n_resamples,)``), i.e. it reduces over the last axis.

With ``strata`` (one label per item), items are resampled within each stratum and the strata
keep their sizes (stratified bootstrap), e.g. items within each BBQ category for an overall score.

Resamples where the statistic is undefined (NaN, e.g. a ratio with an empty denominator) are
left out of the percentiles; if all are NaN the interval is ``(nan, nan)``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

__all__ = ["bootstrap_ci", "percentile_interval", "resample_indices", "summed_statistic", "ratio"]


def resample_indices(
    n: int, n_resamples: int = 1000, seed: int | np.random.Generator = 0, strata: Sequence | None = None
) -> np.ndarray:
    """Index matrix ``(n_resamples, n)`` of bootstrap resamples (within strata when given)."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if n == 0:
        return np.zeros((n_resamples, 0), dtype=np.intp)
    if strata is None:
        return rng.integers(0, n, (n_resamples, n))
    labels = np.asarray(strata)
    if labels.shape[0] != n:
        raise ValueError(f"strata has {labels.shape[0]} labels for {n} items")
    blocks = []
    for value in np.unique(labels):  # sorted labels: the draw order is deterministic
        members = np.flatnonzero(labels == value)
        blocks.append(members[rng.integers(0, len(members), (n_resamples, len(members)))])
    return np.concatenate(blocks, axis=1)


def bootstrap_ci(
    data: np.ndarray | Sequence[np.ndarray],
    statistic_fn: Callable[..., np.ndarray],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    strata: Sequence | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap CI ``(low, high)`` of ``statistic_fn`` over ``data``.

    ``data``: one 1-D array, or a tuple/list of 1-D arrays of equal length (resampled together).
    ``statistic_fn(*arrays)``: arrays of shape ``(n_resamples, n)`` -> values of shape ``(n_resamples,)``.
    """
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    arrays = [np.asarray(data)] if isinstance(data, np.ndarray) else [np.asarray(a) for a in data]
    if not arrays or any(a.ndim != 1 for a in arrays):
        raise ValueError("data must be a 1-D array or a sequence of 1-D arrays")
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError("all data arrays must have the same length")
    if n == 0:
        return (float("nan"), float("nan"))
    idx = resample_indices(n, n_resamples, seed, strata)
    values = np.asarray(statistic_fn(*[a[idx] for a in arrays]), dtype=float).reshape(-1)
    if values.shape[0] != n_resamples:
        raise ValueError(f"statistic_fn returned {values.shape[0]} values for {n_resamples} resamples")
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return (float(low), float(high))


def percentile_interval(
    values: np.ndarray, confidence: float = 0.95, estimate: float | None = None
) -> tuple[float | None, float | None]:
    """Percentile interval of bootstrap ``values`` (NaNs left out); ``(None, None)`` if none is defined.

    With ``estimate``, a bound within float rounding of it is set to it: the resamples are
    computed with numpy reductions and the estimate often with plain Python sums, and a CI that
    collapses onto the estimate must not miss it by one ulp.
    """
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    v = np.asarray(values, dtype=float).reshape(-1)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return (None, None)
    alpha = (1 - confidence) / 2
    bounds = [float(x) for x in np.quantile(v, [alpha, 1 - alpha])]
    if estimate is not None and math.isfinite(estimate):
        tol = 1e-12 * max(1.0, abs(estimate))
        bounds = [estimate if abs(b - estimate) <= tol else b for b in bounds]
    return (bounds[0], bounds[1])


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` elementwise, NaN where ``den`` is 0 (an undefined rate, left out of percentiles)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def summed_statistic(
    counts: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_resamples: int = 1000,
    seed: int = 0,
    strata: Sequence | None = None,
) -> tuple[float, np.ndarray]:
    """A statistic of per-item counts summed over items, and its bootstrap values over resampled items.

    ``counts``: ``(n_items, k)``, e.g. per item its answers, biased answers and correct answers (an item
    may give several answers, one per option order: items stay the resampling unit). ``statistic`` maps
    summed counts ``(..., k)`` to values ``(...)`` (rates are ratios of sums). Returns the value on all
    items and the ``(n_resamples,)`` resampled values (percentiles: :func:`percentile_interval`).
    """
    c = np.asarray(counts, dtype=float).reshape(len(counts), -1)
    value = float(statistic(c.sum(0)))
    idx = resample_indices(len(c), n_resamples, seed, strata)
    return value, np.asarray(statistic(c[idx].sum(1)), dtype=float)
