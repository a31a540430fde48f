"""Statistics over seeds, by scipy.stats: mean, sample std, a 95 % confidence interval, and Welch's t-test."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True)
class SeedSummary:
    mean: float
    std: float  # sample std (ddof=1); NaN with one seed
    n: int
    ci_low: float  # the mean's 95 % confidence interval (Student's t); NaN with one seed
    ci_high: float


def summarise(values: Sequence[float]) -> SeedSummary:
    from scipy import stats

    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return SeedSummary(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return SeedSummary(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=std / math.sqrt(n)) if std > 0 else (mean, mean)
    return SeedSummary(mean, std, n, float(low), float(high))


@dataclass(frozen=True)
class Comparison:
    difference: float  # mean(a) - mean(b)
    p_value: float  # Welch's two-sided t-test (unequal variances); NaN when undefined (one seed, no variance)

    @property
    def significant(self) -> bool:
        return self.p_value < 0.05


def welch(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """mean(a) - mean(b) and Welch's two-sided p-value (scipy.stats.ttest_ind, equal_var=False)."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return Comparison(difference, math.nan)
    return Comparison(difference, float(stats.ttest_ind(a, b, equal_var=False).pvalue))


def format_summary(s: SeedSummary) -> str:
    """'m +- s' (sample std over seeds); one seed says so."""
    if s.n == 0:
        return "n/a"
    if s.n == 1:
        return f"{s.mean:.2f} (1 seed)"
    return f"{s.mean:.2f} +- {s.std:.2f}"


def format_ci(s: SeedSummary) -> str:
    return "n/a" if s.n < 2 else f"[{s.ci_low:.2f}, {s.ci_high:.2f}]"


def format_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
