"""The drift detector on synthetic traffic: its running scores against a direct
computation, batching, the alarm's onset, the calibrated false-alarm rate, and the
calibration stored in the reference profile."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from mnistops.bundle import BundleError, ReferenceProfile
from mnistops.features import image_features
from mnistops.monitor.drift import DriftCalibration, DriftDetector, calibrate
from tests.unit.monitor.traffic import images, probabilities, profile

pytestmark = pytest.mark.unit


def _stream(seed: int, n: int, *, inverted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = images(rng, n)
    return image_features(1.0 - pixels if inverted else pixels), probabilities(rng, n)


def _detector(ert: float = 1e6, every: int = 50) -> DriftDetector:
    reference = profile()
    assert reference.drift is not None
    return DriftDetector(reference, reference.drift, ert, every)


def test_running_scores_match_each_window_computed_directly() -> None:
    detector = _detector()
    features, probs = _stream(1, 1300)
    for start in range(0, 1300, 130):
        detector.update(features[start : start + 130], probs[start : start + 130])
    report = detector.update(features[:0], probs[:0])
    assert report is None  # an empty batch changes nothing
    # the last report's strongest score of each test is the largest over the positions
    # and windows it covered: recompute every one of them directly
    direct = _detector()
    expected: dict[str, float] = {}
    for end in range(1300 - 130 + 1, 1301):
        for w in detector.windows:
            if end >= w:
                check = direct.check(features[end - w : end], probs[end - w : end])
                for name, result in check.tests.items():
                    expected[name] = max(expected.get(name, -np.inf), result.score)
    assert detector.last is not None
    for name, result in detector.last.tests.items():
        assert result.score == pytest.approx(expected[name], abs=1e-9), name


def test_feeding_in_batches_or_one_by_one_raises_the_same_alarms() -> None:
    clean, shifted = _stream(2, 1200), _stream(3, 300, inverted=True)
    features = np.concatenate([clean[0], shifted[0]])
    probs = np.concatenate([clean[1], shifted[1]])
    one, many = _detector(), _detector()
    first_alarm = None
    for i in range(len(features)):
        report = one.update(features[i : i + 1], probs[i : i + 1])
        if report is not None and report.drift and first_alarm is None:
            first_alarm = i + 1
    for start in range(0, len(features), 97):
        many.update(features[start : start + 97], probs[start : start + 97])
    assert one.alarms == many.alarms == 1
    assert first_alarm is not None and 1200 < first_alarm <= 1200 + 50


def test_an_alarm_is_published_at_once_with_the_test_that_explains_it() -> None:
    detector = _detector(every=10_000)  # no verdict is due by count
    assert detector.update(*_stream(4, 1000)) is None
    report = None
    for start in range(0, 200, 10):
        features, probs = _stream(5 + start, 10, inverted=True)
        report = detector.update(features, probs)
        if report is not None:
            break
    assert report is not None and report.drift
    fired = {name for name, r in report.tests.items() if r.score > report.threshold}
    assert "mean_pixel_mean" in fired
    assert report.tests["mean_pixel_mean"].effect > 1.0
    assert report.as_dict()["tests"]["mean_pixel_mean"]["drift"] is True  # type: ignore[index]


def test_the_calibrated_threshold_keeps_the_stated_run_time_between_false_alarms() -> None:
    reference = profile(seed=7, n=6000)  # as many as training holds out
    calibration = calibrate(reference, streams=200, length=5_000, seed=8)
    ert = 20_000
    detector = DriftDetector(reference, calibration, ert, report_every=10_000)
    total = 1_000_000
    rng = np.random.default_rng(9)
    # fresh traffic from the distribution the reference was drawn from
    features, probs = _stream(10, 20_000)
    for _ in range(total // 10_000):
        pick = rng.integers(0, len(features), 10_000)
        detector.update(features[pick], probs[pick])
    measured = total / max(detector.alarms, 1)
    # at least the stated run time, with the slack of a count of about thirty; at most a
    # few times it (each stream is scored against half the reference at calibration, so
    # the threshold is a little conservative)
    assert 0.6 * ert <= measured <= 3.0 * ert, (detector.alarms, measured)


def test_threshold_rises_with_the_run_time_and_refuses_one_shorter_than_a_stream() -> None:
    calibration = DriftCalibration((50, 200), 0.1, 1000, np.array([4.0, 4.5, 5.0, 5.5]))
    assert calibration.threshold(1e4) < calibration.threshold(1e5) < calibration.threshold(1e6)
    with pytest.raises(ValueError, match="exceed 1000"):
        calibration.threshold(1000)


def test_the_calibration_is_stored_in_the_reference_profile(tmp_path: Path) -> None:
    reference = profile()
    path = tmp_path / "reference.npz"
    reference.save(path)
    loaded = ReferenceProfile.load(path)
    assert loaded.drift is not None and reference.drift is not None
    assert loaded.drift.windows == reference.drift.windows
    assert loaded.drift.threshold(1e6) == pytest.approx(reference.drift.threshold(1e6))
    dataclasses.replace(reference, drift=None).save(path)
    assert ReferenceProfile.load(path).drift is None  # an older profile: calibrated at start
    bad = dataclasses.replace(reference, drift=DriftCalibration((), 0.1, 1000, np.array([np.nan])))
    bad.save(path)
    with pytest.raises(BundleError, match="drift calibration is malformed"):
        ReferenceProfile.load(path)
