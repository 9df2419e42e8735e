"""Global thresholds for "keep the top fraction" (DataComp-style) CLIP filtering.

Two-phase and engine-agnostic: each partition builds a `ScoreHistogram` of its scores (map),
the histograms merge by adding counts (a fixed-size integer vector), and the merged
histogram yields the score threshold; rows with `score >= threshold` are kept (phase 2).
`top_fraction_threshold` is the exact version for score arrays that fit in memory.

The number of kept rows is `ceil(fraction * n)` of the finite scores, plus any rows tied at
the threshold (exact) or sharing its histogram bin (at most one bin of `2 / bins` width).
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

DEFAULT_BINS = 1 << 16
LOW, HIGH = -1.0, 1.0  # cosine similarity range


def keep_count(fraction: float, total: int) -> int:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"top fraction must be within [0, 1], not {fraction}")
    return min(total, math.ceil(fraction * total - 1e-9))


def top_fraction_threshold(score_arrays: Iterable[np.ndarray], fraction: float) -> float:
    """The exact score threshold keeping the top `fraction` of all finite scores.

    Returns +inf when nothing is to be kept (no scores, or fraction 0).
    """
    arrays = [np.asarray(a, dtype=np.float32).ravel() for a in score_arrays]
    scores = np.concatenate(arrays) if arrays else np.empty(0, np.float32)
    scores = scores[np.isfinite(scores)]
    k = keep_count(fraction, len(scores))
    if k == 0:
        return math.inf
    return float(np.partition(scores, len(scores) - k)[len(scores) - k])


class ScoreHistogram:
    """A mergeable histogram of scores in [-1, 1] with `bins` equal bins (NaN ignored)."""

    def __init__(self, bins: int = DEFAULT_BINS, counts: np.ndarray | None = None):
        self.bins = int(bins)
        self.counts = np.zeros(self.bins, np.int64) if counts is None else np.asarray(counts, np.int64)
        if self.counts.shape != (self.bins,):
            raise ValueError("counts must have one entry per bin")

    @classmethod
    def of(cls, scores: np.ndarray, bins: int = DEFAULT_BINS) -> "ScoreHistogram":
        return cls(bins).add(scores)

    def add(self, scores: np.ndarray) -> "ScoreHistogram":
        values = np.asarray(scores, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        self.counts += np.bincount(self._bin_of(values), minlength=self.bins)
        return self

    def merge(self, other: "ScoreHistogram") -> "ScoreHistogram":
        if other.bins != self.bins:
            raise ValueError("cannot merge histograms with different bin counts")
        return ScoreHistogram(self.bins, self.counts + other.counts)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def threshold(self, fraction: float) -> float:
        """Lower edge of the bin where the top `fraction` of scores ends (+inf: keep none)."""
        k = keep_count(fraction, self.total)
        if k == 0:
            return math.inf
        from_top = np.cumsum(self.counts[::-1])
        bin_index = self.bins - 1 - int(np.searchsorted(from_top, k))
        return -math.inf if bin_index == 0 else LOW + bin_index * (HIGH - LOW) / self.bins

    def _bin_of(self, values: np.ndarray) -> np.ndarray:
        index = np.floor((values - LOW) / (HIGH - LOW) * self.bins).astype(np.int64)
        return np.clip(index, 0, self.bins - 1)

    def to_dict(self) -> dict:
        """JSON-friendly form (sparse) to hand between workers."""
        nonzero = np.flatnonzero(self.counts)
        return {"bins": self.bins, "index": nonzero.tolist(), "count": self.counts[nonzero].tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "ScoreHistogram":
        histogram = cls(data["bins"])
        histogram.counts[np.asarray(data["index"], np.int64)] = np.asarray(data["count"], np.int64)
        return histogram
