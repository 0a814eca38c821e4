"""95% intervals, so that two scores can be compared honestly (scipy.stats does the work).

  accuracy          k of n right: Wilson's score interval (good at small n and near 0 or 1, unlike the
                    normal approximation)
  ratio             bits per byte = sum of nats / sum of bytes over documents: a percentile bootstrap
                    that resamples documents (tokens of one document are not independent)
  paired_difference two models on the same items: a percentile bootstrap of the difference, resampling
                    items (or documents), so what the items share cancels
Bootstraps draw from a seeded generator: the same inputs give the same interval.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95


@dataclass
class Estimate:
    score: float
    low: float | None  # None where no interval exists (fewer than 2 units to resample)
    high: float | None
    n: int  # items, documents or windows
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


def _ci(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on degenerate resamples (all equal): the interval is still right
        ci = fn()
    low, high = float(ci.low), float(ci.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else (None, None)


def accuracy(correct, confidence: float = CONFIDENCE) -> Estimate:
    """Share of true values in `correct`, with Wilson's interval."""
    from scipy.stats import binomtest

    c = np.asarray(correct, dtype=bool)
    n, k = int(c.size), int(c.sum())
    low, high = _ci(lambda: binomtest(k, n).proportion_ci(confidence, method="wilson"))
    return Estimate(k / n, low, high, n, "wilson")


def _bootstrap(samples: tuple, statistic, confidence: float, n_resamples: int, seed: int):
    from scipy.stats import bootstrap

    return _ci(lambda: bootstrap(samples, statistic, paired=True, vectorized=True, n_resamples=n_resamples,
                                 confidence_level=confidence, method="percentile", batch=max(1, 2_000_000 // max(1, len(samples[0]))),
                                 rng=np.random.default_rng(seed)).confidence_interval)


def ratio(num, den, scale: float = 1.0, confidence: float = CONFIDENCE, n_resamples: int = 2000, *, seed: int,
          unit: str = "documents") -> Estimate:
    """scale * sum(num) / sum(den), with a bootstrap over the units (entries of num and den)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    score = scale * num.sum() / den.sum()
    if num.size < 2:
        return Estimate(float(score), None, None, int(num.size), f"none (one of {unit})")

    def stat(a, b, axis=-1):
        return scale * a.sum(axis=axis) / b.sum(axis=axis)

    low, high = _bootstrap((num, den), stat, confidence, n_resamples, seed)
    return Estimate(float(score), low, high, int(num.size), f"bootstrap over {unit}")


def paired_difference(a, b, confidence: float = CONFIDENCE, n_resamples: int = 2000, *, seed: int,
                      unit: str = "items") -> Estimate:
    """mean(a) - mean(b) of per-item scores of two models on the same items, with a paired bootstrap."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    if d.size < 2:
        return Estimate(float(d.mean()), None, None, int(d.size), f"none (one of {unit})")
    low, high = _bootstrap((d,), lambda x, axis=-1: x.mean(axis=axis), confidence, n_resamples, seed)
    return Estimate(float(d.mean()), low, high, int(d.size), f"paired bootstrap over {unit}")


def paired_ratio_difference(num_a, den_a, num_b, den_b, scale: float = 1.0, confidence: float = CONFIDENCE,
                            n_resamples: int = 2000, *, seed: int, unit: str = "documents") -> Estimate:
    """scale * (sum(num_a)/sum(den_a) - sum(num_b)/sum(den_b)), units resampled together for both models."""
    arrs = tuple(np.asarray(x, float) for x in (num_a, den_a, num_b, den_b))

    def stat(na, da, nb, db, axis=-1):
        return scale * (na.sum(axis=axis) / da.sum(axis=axis) - nb.sum(axis=axis) / db.sum(axis=axis))

    score = float(stat(*arrs))
    if arrs[0].size < 2:
        return Estimate(score, None, None, int(arrs[0].size), f"none (one of {unit})")
    low, high = _bootstrap(arrs, stat, confidence, n_resamples, seed)
    return Estimate(score, low, high, int(arrs[0].size), f"paired bootstrap over {unit}")
