"""Online drift detection over a sliding window of predictions, against the reference
profile of the model version being served.

Tests (scipy.stats), all on the same window:

- ``ks_<feature>``: two-sample Kolmogorov-Smirnov on each per-image statistic;
- ``bbsd_<digit>``: black-box shift detection (Rabanser et al., "Failing Loudly",
  NeurIPS 2019): KS on each softmax output;
- ``label_chi2``: chi-square of predicted-label counts against the reference's;
- ``confidence_drop``: one-sided Mann-Whitney U, is confidence lower than reference?

The verdict is Bonferroni-corrected over all tests: drift when any p-value is below
``alpha / number_of_tests``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from mnistops.bundle import ReferenceProfile
from mnistops.features import NUM_CLASSES

MIN_WINDOW = 100
"""Fewest predictions a check needs (a fresh server is checked before its window is full)."""


@dataclass(frozen=True)
class TestResult:
    statistic: float
    pvalue: float


@dataclass(frozen=True)
class DriftReport:
    """The verdict of one check and every test behind it."""

    drift: bool
    window: int
    threshold: float
    tests: dict[str, TestResult] = field(default_factory=dict)
    checked_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, object]:
        return {
            "drift": self.drift,
            "window": self.window,
            "threshold": self.threshold,
            "checked_at": self.checked_at,
            "tests": {
                name: {"statistic": r.statistic, "pvalue": r.pvalue}
                for name, r in self.tests.items()
            },
        }


class _Ring:
    """A fixed-size ring buffer of rows."""

    def __init__(self, size: int, width: int) -> None:
        self.data = np.zeros((size, width), dtype=np.float32)
        self.count = 0
        self.head = 0

    def extend(self, rows: np.ndarray) -> None:
        rows = rows[-len(self.data) :]
        n = len(rows)
        end = self.head + n
        if end <= len(self.data):
            self.data[self.head : end] = rows
        else:
            split = len(self.data) - self.head
            self.data[self.head :] = rows[:split]
            self.data[: n - split] = rows[split:]
        self.head = end % len(self.data)
        self.count = min(self.count + n, len(self.data))

    def values(self) -> np.ndarray:
        return self.data[: self.count].copy() if self.count < len(self.data) else self.data.copy()


class DriftDetector:
    """Keeps the window incrementally; runs the tests every ``check_every`` predictions."""

    def __init__(
        self, reference: ReferenceProfile, window: int, check_every: int, alpha: float
    ) -> None:
        self.window = window
        self.check_every = check_every
        self.alpha = alpha
        self._lock = threading.Lock()
        self.reset(reference)

    def reset(self, reference: ReferenceProfile) -> None:
        """Start over against a new reference (a new model version)."""
        with self._lock:
            self.reference = reference
            self._ref_conf = reference.probabilities.max(axis=1)
            columns = np.concatenate([reference.features, reference.probabilities], axis=1)
            self._ref_sorted = np.sort(columns, axis=0)
            ref_labels = reference.probabilities.argmax(axis=1)
            counts = np.bincount(ref_labels, minlength=NUM_CLASSES).astype(np.float64)
            self._ref_label_share = (counts + 1) / (counts.sum() + NUM_CLASSES)
            self._features = _Ring(self.window, reference.features.shape[1])
            self._probs = _Ring(self.window, NUM_CLASSES)
            self._since_check = 0
            self.last: DriftReport | None = None

    @property
    def in_window(self) -> int:
        """Predictions in the window now."""
        return self._features.count

    def update(
        self, features: np.ndarray, probabilities: np.ndarray, *, allow_check: bool = True
    ) -> DriftReport | None:
        """Add a batch; returns a new report when a check ran (never when not allowed)."""
        with self._lock:
            self._features.extend(features)
            self._probs.extend(probabilities)
            self._since_check += len(features)
            due = (
                allow_check
                and self._since_check >= self.check_every
                and self._features.count >= min(MIN_WINDOW, self.window)
            )
            if not due:
                return None
            self._since_check = 0
            features_now, probs_now = self._features.values(), self._probs.values()
        report = self.check(features_now, probs_now)
        self.last = report
        return report

    def check(self, features: np.ndarray, probabilities: np.ndarray) -> DriftReport:
        """Run every test of a window against the reference."""
        from scipy import stats

        ref = self.reference
        names = [f"ks_{n}" for n in ref.feature_names] + [f"bbsd_{k}" for k in range(NUM_CLASSES)]
        window = np.concatenate([features, probabilities], axis=1)
        tests = {
            name: _ks_two_sided(window[:, j], self._ref_sorted[:, j])
            for j, name in enumerate(names)
        }
        observed = np.bincount(probabilities.argmax(axis=1), minlength=NUM_CLASSES)
        expected = self._ref_label_share * observed.sum()
        chi = stats.chisquare(observed, expected)
        tests["label_chi2"] = TestResult(float(chi.statistic), float(chi.pvalue))
        drop = stats.mannwhitneyu(
            probabilities.max(axis=1), self._ref_conf, alternative="less", method="asymptotic"
        )
        tests["confidence_drop"] = TestResult(float(drop.statistic), float(drop.pvalue))
        threshold = self.alpha / len(tests)
        drift = any(r.pvalue < threshold for r in tests.values())
        return DriftReport(drift, len(features), threshold, tests)


def _ks_two_sided(sample: np.ndarray, ref_sorted: np.ndarray) -> TestResult:
    """Two-sample KS against a pre-sorted reference (asymptotic p-value, as scipy's
    ``ks_2samp(method="asymp")``), without re-sorting the reference at every check."""
    from scipy import stats

    sample = np.sort(sample)
    n, m = len(sample), len(ref_sorted)
    points = np.concatenate([sample, ref_sorted])
    cdf_sample = np.searchsorted(sample, points, side="right") / n
    cdf_ref = np.searchsorted(ref_sorted, points, side="right") / m
    statistic = float(np.abs(cdf_sample - cdf_ref).max())
    pvalue = float(stats.kstwo.sf(statistic, round(n * m / (n + m))))
    return TestResult(statistic, min(max(pvalue, 0.0), 1.0))
