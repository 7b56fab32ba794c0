"""Confidence intervals for paired, per-row evaluation results.

Every evaluation result here is a list of rows scored by two models (base and trained, or two
experiments) on the same rows, so the question "did it help?" is a paired one: the mean of the
per-row differences, with a percentile bootstrap 95% interval over rows, and the share of rows
that got better. Loss rows weigh by their trained tokens (the mean is the token-weighted mean
loss, as in the report's headline loss); accuracy and judge rows weigh one each.

The bootstrap is seeded, so the same rows give the same interval on every run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
# Which way is better per metric of the per-row results (True: lower); None: neither (answer length
# is reported, not judged).
DIRECTION: dict[str, bool | None] = {
    "loss": True,
    "accuracy": False,
    "win": False,
    "stop": False,
    "repetition": True,
    "length": None,
}


def _ratio_ci(values: np.ndarray, weights: np.ndarray, seed: int, resamples: int) -> tuple[float, float]:
    """Percentile interval of sum(w * v) / sum(w) over rows resampled with replacement."""
    n = len(values)
    if n < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    w = weights[idx]
    stats = (w * values[idx]).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12)
    alpha = (1 - LEVEL) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return float(lo), float(hi)


def paired(
    a: Sequence[float],
    b: Sequence[float],
    weights: Sequence[float] | None = None,
    *,
    lower_is_better: bool = True,
    seed: int = 0,
    resamples: int = RESAMPLES,
    digits: int = 6,
) -> dict:
    """b versus a on the same rows: weighted means of each, the mean difference b - a with its 95%
    bootstrap interval, and how many rows b improved (lower when `lower_is_better`, else higher)."""
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if va.shape != vb.shape:
        raise ValueError("paired: a and b must have one value per row")
    w = np.ones_like(va) if weights is None else np.asarray(weights, dtype=float)
    n = len(va)
    total = float(w.sum())
    if n == 0 or total <= 0:
        return {
            "n": n,
            "a": math.nan,
            "b": math.nan,
            "delta": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "improved": 0,
            "improved_share": math.nan,
        }
    diff = vb - va
    lo, hi = _ratio_ci(diff, w, seed, resamples)
    better = int((diff < 0).sum() if lower_is_better else (diff > 0).sum())

    def r(x: float) -> float:
        return round(x, digits) if math.isfinite(x) else x

    return {
        "n": n,
        "a": r(float((w * va).sum() / total)),
        "b": r(float((w * vb).sum() / total)),
        "delta": r(float((w * diff).sum() / total)),
        "ci_low": r(lo),
        "ci_high": r(hi),
        "improved": better,
        "improved_share": r(better / n),
    }


def mean_ci(values: Sequence[float], *, seed: int = 0, resamples: int = RESAMPLES, digits: int = 6) -> dict:
    """The mean of `values` (e.g. 1/0.5/0 judge scores) with a 95% bootstrap interval."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return {"n": 0, "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    lo, hi = _ratio_ci(v, np.ones_like(v), seed, resamples)
    return {
        "n": len(v),
        "mean": round(float(v.mean()), digits),
        "ci_low": round(lo, digits),
        "ci_high": round(hi, digits),
    }


def wilson(k: int, n: int, digits: int = 6) -> dict:
    """A proportion k/n with its 95% Wilson score interval (sound at 0/n and n/n, unlike the
    bootstrap, which collapses to a point there)."""
    if n == 0:
        return {"n": 0, "rate": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {
        "n": n,
        "rate": round(p, digits),
        "ci_low": round(max(0.0, centre - half), digits),
        "ci_high": round(min(1.0, centre + half), digits),
    }
