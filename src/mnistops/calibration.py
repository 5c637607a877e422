"""Calibration and accuracy without labels.

Temperature scaling (Guo et al., 2017): one temperature ``T`` fitted on held-out data by
minimising the negative log-likelihood of ``softmax(log p / T)``; it changes confidence,
never the predicted digit. Average thresholded confidence (ATC; Garg et al., ICLR 2022):
on held-out data, the confidence threshold above which the share of images equals the
accuracy there; on a window of unlabelled traffic, the share of images above it is the
estimated accuracy. ATC fails where a model stays confident while wrong on images unlike
any it was trained on (inverted digits: 82 points off), so an image whose input
statistics (``features.py``) fall outside the held-out images' range counts as wrong
whatever its confidence. Both are fitted from the reference profile (the held-out images'
probabilities and true labels), at training time, and stored with the version.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mnistops.evaluate import expected_calibration_error

TEMPERATURE_BOUNDS = (0.05, 20.0)
DIGIT_REJECTED = 0.003
"""Share of held-out digits each "not a digit" test turns away (two tests: under 1 %)."""
FEATURE_RANGE = (0.0005, 0.9995)
"""The quantiles of the held-out images' input statistics that span "like training"..."""
FEATURE_MARGIN = 1.0
"""... widened by this many times its width on each side: thicker or noisier digits stay
inside (they are read right), inverted ones fall outside."""
_TINY = 1e-12


@dataclass(frozen=True)
class Calibration:
    """What a version's held-out data says about its confidence."""

    temperature: float
    atc_threshold: float
    """Calibrated confidence above which an image counts as "probably right"."""
    ece_before: float
    ece_after: float
    heldout_accuracy: float
    feature_low: tuple[float, ...] = ()
    """Per input statistic, the low end of the held-out range (empty: no gate)."""
    feature_high: tuple[float, ...] = ()
    digit_mean: tuple[float, ...] = ()
    """"Not a digit": the held-out images' mean input statistics ..."""
    digit_precision: tuple[float, ...] = ()
    """... the inverse of their covariance (row by row) ..."""
    digit_distance: float = float("inf")
    """... the squared Mahalanobis distance above which an image is not like them ..."""
    digit_confidence: float = 0.0
    """... and the confidence under which the model does not see a digit in it."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(
            temperature=float(data["temperature"]),
            atc_threshold=float(data["atc_threshold"]),
            ece_before=float(data["ece_before"]),
            ece_after=float(data["ece_after"]),
            heldout_accuracy=float(data["heldout_accuracy"]),
            feature_low=tuple(float(v) for v in data.get("feature_low", ())),
            feature_high=tuple(float(v) for v in data.get("feature_high", ())),
            digit_mean=tuple(float(v) for v in data.get("digit_mean", ())),
            digit_precision=tuple(float(v) for v in data.get("digit_precision", ())),
            digit_distance=float(data.get("digit_distance", float("inf"))),
            digit_confidence=float(data.get("digit_confidence", 0.0)),
        )

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of input statistics to the held-out
        images' (zeros when this calibration has none)."""
        if not self.digit_mean:
            return np.zeros(len(features))
        mean, precision = self._digit_arrays
        centred = np.asarray(features, dtype=np.float64) - mean
        return ((centred @ precision) * centred).sum(axis=1)

    @functools.cached_property
    def _digit_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The "not a digit" mean and precision as arrays, built once per calibration."""
        size = len(self.digit_mean)
        mean = np.asarray(self.digit_mean)
        return mean, np.asarray(self.digit_precision).reshape(size, size)

    def is_digit(self, probabilities: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Per image: confident enough, and its input statistics like the held-out digits'.

        ``probabilities`` are the served (calibrated) ones, ``features`` from
        :func:`mnistops.features.image_features` of the same pixels."""
        confident = np.asarray(probabilities).max(axis=1) >= self.digit_confidence
        return confident & (self.distance(features) <= self.digit_distance)

    def scale(self, probabilities: np.ndarray) -> np.ndarray:
        """``[N, 10]`` probabilities at this temperature."""
        return scaled(probabilities, self.temperature)

    def probably_right(
        self, probabilities: np.ndarray, features: np.ndarray | None = None
    ) -> np.ndarray:
        """Per image: confident beyond the threshold, and (given its input statistics)
        like the held-out images."""
        above = self.scale(probabilities).max(axis=1) > self.atc_threshold
        if features is not None and self.feature_low:
            low, high = np.asarray(self.feature_low), np.asarray(self.feature_high)
            above &= ((features >= low) & (features <= high)).all(axis=1)
        return above

    def estimate_accuracy(
        self, probabilities: np.ndarray, features: np.ndarray | None = None
    ) -> float | None:
        """ATC's estimate of accuracy over ``probabilities`` (None for none)."""
        if not len(probabilities):
            return None
        return float(self.probably_right(probabilities, features).mean())


def scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``, row by row."""
    logits = np.log(np.clip(probabilities.astype(np.float64), _TINY, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels``."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(labels))

    def nll(temperature: float) -> float:
        return float(-np.log(scaled(probabilities, temperature)[rows, labels] + _TINY).mean())

    found = minimize_scalar(nll, bounds=TEMPERATURE_BOUNDS, method="bounded")
    return float(found.x)


def calibrate(
    probabilities: np.ndarray, labels: np.ndarray, features: np.ndarray | None = None
) -> Calibration:
    """Fit the temperature and the ATC threshold on held-out ``probabilities`` (and, given
    the held-out images' input statistics, the range of each)."""
    labels = labels.astype(np.int64)
    temperature = fit_temperature(probabilities, labels)
    calibrated = scaled(probabilities, temperature)
    accuracy = float((calibrated.argmax(axis=1) == labels).mean())
    confidence = calibrated.max(axis=1)
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    if features is not None and len(features):
        bottom = np.quantile(features, FEATURE_RANGE[0], axis=0)
        top = np.quantile(features, FEATURE_RANGE[1], axis=0)
        width = top - bottom
        low = tuple(float(v) for v in bottom - FEATURE_MARGIN * width)
        high = tuple(float(v) for v in top + FEATURE_MARGIN * width)
        inside = ((features >= np.asarray(low)) & (features <= np.asarray(high))).all(axis=1)
        confidence = np.where(inside, confidence, -1.0)  # never above any threshold
    # the share of held-out images above the threshold is the held-out accuracy
    threshold = float(np.quantile(confidence, 1.0 - accuracy))
    digit: dict[str, Any] = {}
    if features is not None and len(features) > features.shape[1]:
        digit = _digit_check(calibrated, features)
    return Calibration(
        temperature=temperature,
        atc_threshold=threshold,
        ece_before=expected_calibration_error(probabilities, labels),
        ece_after=expected_calibration_error(calibrated, labels),
        heldout_accuracy=accuracy,
        feature_low=low,
        feature_high=high,
        **digit,
    )


def _digit_check(calibrated: np.ndarray, features: np.ndarray) -> dict[str, Any]:
    """The "not a digit" thresholds: each turns away :data:`DIGIT_REJECTED` of the held-out
    digits."""
    values = np.asarray(features, dtype=np.float64)
    mean = values.mean(axis=0)
    covariance = np.cov(values, rowvar=False) + 1e-9 * np.eye(values.shape[1])
    precision = np.linalg.inv(covariance)
    centred = values - mean
    distance = np.einsum("ni,ij,nj->n", centred, precision, centred)
    return {
        "digit_mean": tuple(float(v) for v in mean),
        "digit_precision": tuple(float(v) for v in precision.ravel()),
        "digit_distance": float(np.quantile(distance, 1.0 - DIGIT_REJECTED)),
        "digit_confidence": float(np.quantile(calibrated.max(axis=1), DIGIT_REJECTED)),
    }
