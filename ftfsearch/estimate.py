"""How many, with error bars: a stratified estimate of the number of positive tiles from reviews.

The tiles in scope are split into strata by the classifier's probability; reviewers answer y/n
for tiles drawn at random within strata. The count is ``sum_h N_h p_h`` with the stratified
variance ``sum_h N_h^2 (1 - n_h/N_h) p~_h (1 - p~_h) / n_h``, where ``p~_h = (y_h + 1/2)/(n_h + 1)``
keeps a stratum whose few reviews were all alike from claiming no uncertainty (the plain
estimate's interval then covers the truth far less than 95% of the time; see
tests/test_estimate.py's simulation). A stratum nobody reviewed counts as unknown: 0 to ``N_h``
added to the interval's ends, its midpoint to the estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Stratum:
    size: int
    """Tiles in the stratum (N_h)."""
    reviewed: int
    """Tiles reviewed in it (n_h), drawn at random within it."""
    positive: int
    """Of those, answered yes (y_h)."""


@dataclass(frozen=True)
class Estimate:
    count: float
    low: float
    high: float
    reviewed: int

    def __str__(self) -> str:
        return f"≈ {self.count:,.0f} (95% CI {self.low:,.0f}–{self.high:,.0f}) from {self.reviewed} reviewed"

    def scaled(self, factor: float) -> "Estimate":
        """The estimate of a quantity proportional to this one (merged objects from tiles: the
        detections' objects per detected tile), its interval scaled alike."""
        return Estimate(self.count * factor, self.low * factor, self.high * factor, self.reviewed)


def stratified_estimate(strata: Sequence[Stratum]) -> Estimate:
    """The estimated number of positives over all strata, with a 95% interval."""
    count = variance = unknown = 0.0
    reviewed = 0
    for s in strata:
        if s.size <= 0:
            continue
        if s.reviewed <= 0:
            unknown += s.size
            continue
        n = min(s.reviewed, s.size)
        reviewed += n
        count += s.size * s.positive / n
        p = (s.positive + 0.5) / (n + 1.0)
        variance += s.size ** 2 * (1.0 - n / s.size) * p * (1.0 - p) / n
    half = Z95 * math.sqrt(variance)
    total = sum(max(s.size, 0) for s in strata)
    low = max(0.0, count - half)
    high = min(float(total), count + half + unknown)
    return Estimate(count=count + unknown / 2, low=low, high=high, reviewed=reviewed)


def strata_edges(probabilities: np.ndarray, k: int = 5) -> np.ndarray:
    """``k`` probability strata: 0.5 and above split evenly (the detections), below by quantiles."""
    high = np.linspace(0.5, 1.0, 3)[1:-1]
    low = np.quantile(probabilities[probabilities < 0.5], np.linspace(0, 1, k - 1)[1:-1]) \
        if np.any(probabilities < 0.5) else np.array([])
    return np.unique(np.concatenate([low, [0.5], high]))


def next_stratum(strata: Sequence[Stratum]) -> int:
    """Where the next review helps most: an unreviewed stratum first, else the one whose variance
    term drops most with one more review (Neyman allocation, greedily)."""
    best, gain = 0, -1.0
    for h, s in enumerate(strata):
        if s.size <= s.reviewed:
            continue
        if s.reviewed == 0:
            return h
        p = (s.positive + 0.5) / (s.reviewed + 1.0)
        now = s.size ** 2 * (1 - s.reviewed / s.size) * p * (1 - p) / s.reviewed
        after = s.size ** 2 * (1 - (s.reviewed + 1) / s.size) * p * (1 - p) / (s.reviewed + 1)
        if now - after > gain:
            best, gain = h, now - after
    return best


def most_mixed(strata: Sequence[Stratum]) -> int:
    """The open stratum whose answers are least one-sided (``p~ (1 - p~)`` largest): where the
    classifier is least reliable, so a review's learning draws go there."""
    best, spread = 0, -1.0
    for h, s in enumerate(strata):
        if s.size <= s.reviewed:
            continue
        p = (s.positive + 0.5) / (s.reviewed + 1.0)
        if p * (1 - p) > spread:
            best, spread = h, p * (1 - p)
    return best
