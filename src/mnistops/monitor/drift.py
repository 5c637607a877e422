"""Online drift detection with a stated false-alarm rate: tests on sliding windows of
several sizes, evaluated at every prediction, against one threshold calibrated at
training time so that a stream like the held-out data raises a false alarm once per
``drift_ert`` predictions on average (the expected run time, ERT).

The tests, on each window of the last ``w`` predictions (``w`` in :data:`WINDOWS`):

- ``mean_<feature>``: has the mean of a per-image statistic moved? Score
  ``sqrt(w) * (|mean - reference mean| / reference sd - tolerance)``;
- ``confidence_drop``: has the mean confidence dropped? The same score, one-sided;
- ``label_chi2``: have the predicted digits' shares moved? Black-box shift detection on
  hard labels (BBSDh, Rabanser et al., "Failing Loudly", NeurIPS 2019), scored as
  ``sqrt(w) * (Cohen's w - tolerance)`` with ``Cohen's w = sqrt(chi2 / w)``.

Every score is on the scale of a standard normal deviate. ``tolerance`` (0.1) is the
smallest effect, in standard deviations, that counts as drift: MNIST's own test set
differs from its training set by up to 0.06 of a standard deviation (other writers), and
an alarm on that would be true and useless.

Why windows and a bootstrap, not a sequential test: the scores are window means, cheap to
slide (running sums: no sort, no scipy at serving time), short windows find a gross
shift in tens of predictions and long ones a 10 % mixture, and the threshold on the
largest score over every test and window is calibrated by simulation, as Alibi Detect's
online detectors are: :func:`calibrate` replays bootstrap streams drawn from the held-out
reference through this same detector, takes the largest score of each stream, fits a
Gumbel law to those maxima (their limit law) and stores them. The threshold for an ERT
is the level a stream of ``length`` predictions exceeds with probability
``length / ERT``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mnistops.features import NUM_CLASSES

WINDOWS: tuple[int, ...] = (50, 200, 1000)
"""The sliding windows every test runs on, shortest first."""
TOLERANCE = 0.1
"""The smallest effect (in reference standard deviations; Cohen's w for the labels) that
counts as drift."""
OUTPUT_MIN_WINDOW = 200
"""The shortest window the tests on the model's outputs (confidence, predicted digits)
run on: on fewer predictions their statistics are coarse (five expected per digit in 50)
and heavy-tailed, and the shortest window would set the threshold for every test."""
CALIBRATION_STREAMS = 250
CALIBRATION_LENGTH = 20_000
"""Bootstrap streams replayed at training time, and predictions in each."""
EULER_GAMMA = 0.5772156649015329
CONFIDENCE_FLOOR = 0.5


class Reference(Protocol):
    """What the detector reads of a reference profile (``bundle.ReferenceProfile``)."""

    @property
    def feature_names(self) -> tuple[str, ...]: ...
    @property
    def features(self) -> np.ndarray: ...
    @property
    def probabilities(self) -> np.ndarray: ...


@dataclass(frozen=True)
class DriftCalibration:
    """What calibrating a version's detector found: the largest score of each bootstrap
    stream (``length`` predictions each), for the ``windows`` and ``tolerance`` used."""

    windows: tuple[int, ...]
    tolerance: float
    length: int
    maxima: np.ndarray

    def threshold(self, ert: float) -> float:
        """The score a stream like the reference exceeds once per ``ert`` predictions:
        the Gumbel law fitted to the streams' maxima (method of moments), at the
        probability ``length / ert`` per stream."""
        if ert <= self.length:
            raise ValueError(f"the expected run time must exceed {self.length} predictions")
        scale = max(float(np.std(self.maxima)), 1e-6) * math.sqrt(6) / math.pi
        location = float(np.mean(self.maxima)) - EULER_GAMMA * scale
        return location - scale * math.log(-math.log1p(-self.length / ert))


@dataclass(frozen=True)
class TestResult:
    """One test's evidence: its score, the effect behind it and the window it came from."""

    score: float
    effect: float
    window: int

    @property
    def pvalue(self) -> float:
        """The score's nominal one-sided normal tail (for reading, not for the verdict)."""
        return 0.5 * math.erfc(self.score / math.sqrt(2))


@dataclass(frozen=True)
class DriftReport:
    """The verdict since the previous report and every test's strongest evidence."""

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
                name: {
                    "score": r.score,
                    "effect": r.effect,
                    "window": r.window,
                    "drift": r.score > self.threshold,
                    "pvalue": r.pvalue,
                }
                for name, r in self.tests.items()
            },
        }


class _Scorer:
    """Turns window sums into the tests' scores, against one reference."""

    def __init__(
        self,
        feature_names: tuple[str, ...],
        features: np.ndarray,
        probabilities: np.ndarray,
        tolerance: float,
    ) -> None:
        self.tolerance = tolerance
        self.names = [f"mean_{n}" for n in feature_names] + ["confidence_drop", "label_chi2"]
        means = rows(features, probabilities)
        self.means = means.mean(axis=0)
        self.sds = np.maximum(means.std(axis=0), 1e-6)
        self.width = features.shape[1] + 1  # the mean tests' columns (confidence last)
        counts = np.bincount(probabilities.argmax(axis=1), minlength=NUM_CLASSES)
        self.shares = (counts + 1.0) / (counts.sum() + NUM_CLASSES)

    def scores(self, sums: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and effects ``[n, tests]`` of windows of ``w`` given their sums."""
        mean = sums[:, : self.width] / w
        effect = (mean - self.means[: self.width]) / self.sds[: self.width]
        effect[:, :-1] = np.abs(effect[:, :-1])
        effect[:, -1] = -effect[:, -1]  # confidence: only a drop counts
        counts = sums[:, self.width :]
        chi2 = ((counts - w * self.shares) ** 2 / (w * self.shares)).sum(axis=1)
        effects = np.concatenate([effect, np.sqrt(chi2 / w)[:, None]], axis=1)
        scores = math.sqrt(w) * (effects - self.tolerance)
        if w < OUTPUT_MIN_WINDOW:
            scores[:, -2:] = -np.inf
        return scores, effects


def rows(features: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """What the detector keeps of each prediction: its features, its confidence and its
    predicted digit one-hot (float64, for exact running sums)."""
    one_hot = np.eye(NUM_CLASSES)[probabilities.argmax(axis=1)]
    confidence = np.maximum(probabilities.max(axis=1, keepdims=True), CONFIDENCE_FLOOR)
    return np.concatenate([features, confidence, one_hot], axis=1, dtype=np.float64)


def _window_scores(
    scorer: _Scorer, history: np.ndarray, new: int, windows: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scores at each of the last ``new`` positions of ``history`` (rows, oldest
    first), as the largest over the windows that are full there: ``(scores, effects,
    windows)``, each ``[new, tests]`` (``-inf`` where no window is full yet)."""
    total = len(history)
    cumulative = np.zeros((total + 1, history.shape[1]))
    np.cumsum(history, axis=0, out=cumulative[1:])
    ends = np.arange(total - new + 1, total + 1)
    tests = len(scorer.names)
    best = np.full((new, tests), -np.inf)
    best_effect = np.zeros((new, tests))
    best_window = np.zeros((new, tests), dtype=np.int64)
    for w in windows:
        full = ends >= w
        if not full.any():
            continue
        at = ends[full]
        score, effect = scorer.scores(cumulative[at] - cumulative[at - w], w)
        better = score > best[full]
        best[full] = np.where(better, score, best[full])
        best_effect[full] = np.where(better, effect, best_effect[full])
        best_window[full] = np.where(better, w, best_window[full])
    return best, best_effect, best_window


class DriftDetector:
    """Scores every prediction; reports every ``report_every`` predictions (at once when
    an alarm begins) the verdict since the last report and each test's strongest score.
    """

    def __init__(
        self,
        reference: Reference,
        calibration: DriftCalibration,
        ert: float,
        report_every: int = 50,
    ) -> None:
        self.report_every = report_every
        self.ert = ert
        self._lock = threading.Lock()
        self.reset(reference, calibration)

    def reset(self, reference: Reference, calibration: DriftCalibration) -> None:
        """Start over against a new reference (a new model version)."""
        with self._lock:
            self.reference = reference
            self.calibration = calibration
            self.threshold = calibration.threshold(self.ert)
            self._scorer = _Scorer(
                reference.feature_names,
                reference.features,
                reference.probabilities,
                calibration.tolerance,
            )
            self._history = np.zeros((0, self._scorer.width + NUM_CLASSES))
            self._seen = 0
            self._pending: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
            self._since = 0
            self._alarmed = False
            self._above = False
            self.alarms = 0
            """Alarms raised: each run of positions scoring above the threshold counts once."""
            self.last: DriftReport | None = None

    @property
    def windows(self) -> tuple[int, ...]:
        """The sliding windows, shortest first (the calibration's)."""
        return self.calibration.windows

    @property
    def window(self) -> int:
        """The longest window."""
        return self.windows[-1]

    @property
    def in_window(self) -> int:
        """Predictions in the longest window now."""
        return min(self._seen, self.window)

    def update(
        self, features: np.ndarray, probabilities: np.ndarray, *, allow_report: bool = True
    ) -> DriftReport | None:
        """Score a batch; a new report when one is due (an alarm's onset is always due)."""
        if not len(features):
            return None
        with self._lock:
            new = rows(features, probabilities)
            keep = self.window - 1
            self._history = np.concatenate([self._history[-keep:], new])
            self._seen += len(new)
            scores, effects, windows = _window_scores(
                self._scorer, self._history, len(new), self.windows
            )
            onset = self._fold(scores, effects, windows)
            self._since += len(new)
            if not (onset or (allow_report and self._since >= self.report_every)):
                return None
            report = self._report()
            self.last = report
            return report

    def _fold(self, scores: np.ndarray, effects: np.ndarray, windows: np.ndarray) -> bool:
        """Keep each test's strongest score since the last report; count the alarms that
        begin in this batch (True if one does)."""
        strongest = scores.argmax(axis=0)
        columns = np.arange(scores.shape[1])
        top = (scores[strongest, columns], effects[strongest, columns], windows[strongest, columns])
        if self._pending is None:
            self._pending = top
        else:
            better = top[0] > self._pending[0]
            self._pending = tuple(  # type: ignore[assignment]
                np.where(better, new, old) for new, old in zip(top, self._pending, strict=True)
            )
        above = scores.max(axis=1) > self.threshold
        before = np.concatenate([[self._above], above[:-1]])
        onsets = int((above & ~before).sum())
        self.alarms += onsets
        self._above = bool(above[-1])
        self._alarmed = self._alarmed or bool(above.any())
        return onsets > 0

    def _report(self) -> DriftReport:
        assert self._pending is not None
        score, effect, window = self._pending
        tests = {
            name: TestResult(float(score[j]), float(effect[j]), int(window[j]))
            for j, name in enumerate(self._scorer.names)
            if np.isfinite(score[j])
        }
        report = DriftReport(self._alarmed, self.in_window, self.threshold, tests)
        self._pending, self._since, self._alarmed = None, 0, False
        return report

    def check(self, features: np.ndarray, probabilities: np.ndarray) -> DriftReport:
        """Every test on one sample taken as a single window (the offline report)."""
        sums = rows(features, probabilities).sum(axis=0, keepdims=True)
        score, effect = self._scorer.scores(sums, len(features))
        tests = {
            name: TestResult(float(score[0, j]), float(effect[0, j]), len(features))
            for j, name in enumerate(self._scorer.names)
        }
        drift = any(r.score > self.threshold for r in tests.values())
        return DriftReport(drift, len(features), self.threshold, tests)


def calibrate(
    reference: Reference,
    *,
    windows: tuple[int, ...] = WINDOWS,
    tolerance: float = TOLERANCE,
    streams: int = CALIBRATION_STREAMS,
    length: int = CALIBRATION_LENGTH,
    seed: int = 0,
) -> DriftCalibration:
    """Replay ``streams`` bootstrap streams of ``length`` predictions through the
    detector's scores; keep each stream's largest.

    Each stream is drawn from one random half of the held-out reference and scored
    against the other half's means and shares, so the threshold also covers the error of
    estimating them (a stream scored against the sample it was drawn from would see none,
    and the threshold would come out too low for traffic from the same distribution)."""
    table = rows(reference.features, reference.probabilities)
    rng = np.random.default_rng(seed)
    maxima = np.empty(streams)
    half = len(table) // 2
    for s in range(streams):
        order = rng.permutation(len(table))
        fitted, drawn = order[:half], order[half:]
        scorer = _Scorer(
            reference.feature_names,
            reference.features[fitted],
            reference.probabilities[fitted],
            tolerance,
        )
        stream = table[drawn[rng.integers(0, len(drawn), length)]]
        scores, _, _ = _window_scores(scorer, stream, length, windows)
        maxima[s] = scores.max()
    return DriftCalibration(tuple(windows), tolerance, length, maxima)
