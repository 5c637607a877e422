"""Temperature scaling and ATC on made-up probabilities whose calibration is known."""

from __future__ import annotations

import numpy as np
import pytest

from mnistops.calibration import Calibration, calibrate, scaled

pytestmark = pytest.mark.unit


def _overconfident(n: int, mean_confidence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a model right with the probability it states, then made
    overconfident (temperature 1/3); and the true labels."""
    rng = np.random.default_rng(seed)
    confidence = np.clip(rng.beta(8 * mean_confidence, 8 * (1 - mean_confidence), n), 0.11, 0.999)
    predicted = rng.integers(0, 10, n)
    right = rng.random(n) < confidence
    labels = np.where(right, predicted, (predicted + rng.integers(1, 10, n)) % 10)
    probs = np.repeat(((1 - confidence) / 9)[:, None], 10, axis=1)
    probs[np.arange(n), predicted] = confidence
    return scaled(probs, 1 / 3), labels


def test_temperature_scaling_lowers_the_calibration_error_and_keeps_the_digits() -> None:
    probs, labels = _overconfident(6000, 0.9, seed=1)
    found = calibrate(probs, labels)
    assert found.temperature > 1.5  # overconfident: it is cooled
    assert found.ece_after < found.ece_before / 2
    assert (found.scale(probs).argmax(1) == probs.argmax(1)).all()


def test_atc_matches_held_out_accuracy_and_falls_with_it() -> None:
    probs, labels = _overconfident(6000, 0.9, seed=2)
    found = calibrate(probs, labels)
    estimate = found.estimate_accuracy(probs)
    assert estimate == pytest.approx(found.heldout_accuracy, abs=0.002)
    worse, worse_labels = _overconfident(3000, 0.6, seed=3)  # less sure, less often right
    true = float((worse.argmax(1) == worse_labels).mean())
    assert true < found.heldout_accuracy - 0.2
    estimated = found.estimate_accuracy(worse)
    assert estimated is not None and estimated < found.heldout_accuracy - 0.2
    assert found.estimate_accuracy(worse[:0]) is None


def test_a_calibration_round_trips_through_its_dict() -> None:
    probs, labels = _overconfident(500, 0.8, seed=4)
    found = calibrate(probs, labels)
    assert Calibration.from_dict(found.as_dict()) == found


def test_images_unlike_the_held_out_ones_count_as_wrong_however_confident() -> None:
    probs, labels = _overconfident(6000, 0.9, seed=5)
    features = np.random.default_rng(5).normal(0, 1, (6000, 5))
    found = calibrate(probs, labels, features)
    assert found.estimate_accuracy(probs, features) == pytest.approx(
        found.heldout_accuracy, abs=0.003
    )
    inverted = features + 30.0  # far outside every held-out range, confidence unchanged
    assert found.estimate_accuracy(probs, inverted) == 0.0
    assert found.estimate_accuracy(probs) == pytest.approx(found.heldout_accuracy, abs=0.01)
    assert Calibration.from_dict(found.as_dict()) == found


def test_a_little_beyond_the_held_out_range_is_still_inside() -> None:
    probs, labels = _overconfident(6000, 0.9, seed=6)
    features = np.random.default_rng(6).normal(0, 1, (6000, 5))
    found = calibrate(probs, labels, features)
    thicker = features + 2.0  # as thicker strokes move ink statistics: still digits
    assert found.estimate_accuracy(probs, thicker) == pytest.approx(
        found.estimate_accuracy(probs, features), abs=0.02
    )


def test_not_a_digit_turns_away_few_held_out_images_and_the_unlike_ones() -> None:
    from mnistops.calibration import DIGIT_REJECTED

    probs, labels = _overconfident(6000, 0.9, seed=4)
    rng = np.random.default_rng(4)
    features = rng.normal([0.13, 0.3, 0.1, 14.0, 14.0], [0.03, 0.03, 0.03, 1.0, 1.0], (6000, 5))
    found = calibrate(probs, labels, features)
    served = found.scale(probs)
    kept = found.is_digit(served, features)
    assert 1 - kept.mean() <= 2 * DIGIT_REJECTED + 0.002
    assert 1 - kept.mean() >= DIGIT_REJECTED - 0.001
    # an empty field (all statistics 0, centre 13.5) is far from every digit
    blank = np.array([[0.0, 0.0, 0.0, 13.5, 13.5]])
    assert not found.is_digit(served[:1], blank)[0]
    # so is a confident answer on a like-looking image that no digit was that unsure of
    unsure = np.full((1, 10), 0.1)
    assert not found.is_digit(unsure, features[:1])[0]
    again = Calibration.from_dict(found.as_dict())
    assert np.array_equal(again.is_digit(served, features), kept)


def test_a_calibration_stored_without_the_check_sees_a_digit_everywhere() -> None:
    probs, labels = _overconfident(2000, 0.9, seed=5)
    old = {k: v for k, v in calibrate(probs, labels).as_dict().items() if "digit" not in k}
    found = Calibration.from_dict(old)
    assert found.is_digit(probs, np.zeros((len(probs), 5))).all()
