"""Intervals for the evaluation's rates and means, standard library only.

    wilson(k, n)               a proportion k/n with its Wilson score interval
    mean_interval(values)      a mean with its Student t interval
    paired_difference(a, b, clusters)
                               mean of a - b, where a[i] and b[i] share a prompt and a seed,
                               with a t interval over clusters (prompts), not over rows

Every interval is two-sided at `confidence` (0.95 by default). The tests hold each one to
statsmodels / scipy.stats.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A rate or a mean, its interval [low, high] and the number of observations it rests on
    (`n`: rows for a rate, clusters for a paired difference)."""

    value: float
    low: float
    high: float
    n: int
    method: str

    def as_dict(self) -> dict:
        return asdict(self)


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}: expected a number in (0, 1)")


def wilson(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    """k/n with the Wilson score interval (Wilson 1927): unlike the normal approximation, it
    stays inside [0, 1] and is not empty at k = 0 or k = n."""
    _check_confidence(confidence)
    if n <= 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "wilson")
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)       # exactly, not 1e-17 from rounding
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Estimate(p, low, high, n, "wilson")


def accuracy(labels, probabilities, threshold: float = 0.5) -> Estimate:
    """A classifier's accuracy with its Wilson interval: label y (0/1, or bools) is called right
    where (probability >= threshold) == y."""
    labels, probabilities = list(labels), list(probabilities)
    if len(labels) != len(probabilities):
        raise ValueError(f"{len(labels)} labels for {len(probabilities)} probabilities")
    return wilson(sum((p >= threshold) == bool(y) for y, p in zip(labels, probabilities)), len(labels))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """The mean with the Student t interval mean +- t(df = n - 1) * sd / sqrt(n). With fewer
    than two values the interval is NaN: one observation says nothing about its spread."""
    _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, "t")
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n, "t")
    half = student_t_ppf(0.5 + confidence / 2, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n, "t")


def paired_difference(a: Sequence[float], b: Sequence[float], clusters: Sequence | None = None,
                      confidence: float = 0.95) -> Estimate:
    """mean(a - b) over rows paired by prompt and seed, with a t interval over clusters: the
    rows' differences are averaged within each cluster (a prompt's samples), and the estimate
    is the mean of those cluster means, with their t interval (equal to the mean over rows when
    every cluster has as many rows, as in the evaluation). Samples of one prompt are not independent, so
    the clusters, not the rows, are the observations; with no clusters every row is one."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in shape: {a.shape} and {b.shape}")
    diff = a - b
    if clusters is None:
        e = mean_interval(diff, confidence)
        return Estimate(e.value, e.low, e.high, e.n, "paired t")
    keys = list(clusters)
    if len(keys) != diff.size:
        raise ValueError(f"{len(keys)} cluster labels for {diff.size} pairs")
    groups: dict = {}
    for key, d in zip(keys, diff):
        groups.setdefault(key, []).append(d)
    estimate = mean_interval([float(np.mean(g)) for g in groups.values()], confidence)
    return Estimate(estimate.value, estimate.low, estimate.high, estimate.n, "paired t over clusters")


# ---------------------------------------------------------------------------------------------
# Student's t quantile, from the regularized incomplete beta function


def student_t_ppf(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom (p in (0, 1)), by bisection on
    the CDF to the last float (scipy.stats.t.ppf agrees to ~1e-12)."""
    if not 0 < p < 1:
        raise ValueError(f"p={p!r}: expected a probability in (0, 1)")
    if df < 1:
        raise ValueError(f"df={df!r}: expected at least 1")
    if p < 0.5:
        return -student_t_ppf(1 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if student_t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) = 1 - I_x(df/2, 1/2) / 2 for t >= 0, x = df / (df + t^2)."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t >= 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta I_x(a, b), by its continued fraction (modified Lentz),
    using the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where that converges faster."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    return math.exp(log_front) * _beta_fraction(a, b, x) / a


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-16:
            break
    return h
