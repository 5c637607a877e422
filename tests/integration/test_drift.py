"""Drift detection on real images, at the library level (features + a trained model).

Targets: Fashion-MNIST flagged within 200 predictions; digits rotated, inverted or with
heavy noise flagged; clean MNIST test traffic raises a false alarm in at most 1 % of
windows.
"""

from __future__ import annotations

import numpy as np
import pytest

from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.features import image_features
from mnistops.monitor.drift import DriftDetector
from mnistops.ops.simulate import scenario_images
from mnistops.predictor import Predictor

pytestmark = pytest.mark.integration
WINDOW, EVERY, ALPHA = 500, 50, 0.001


@pytest.fixture(scope="module")
def predictor(trained_bundle: ModelBundle) -> Predictor:
    model = Predictor(trained_bundle)
    model.load()
    return model


def _stream(predictor: Predictor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = images.reshape(len(images), 784).astype(np.float32) / 255
    return image_features(pixels), predictor.predict(pixels)


def _first_alarm(detector: DriftDetector, features: np.ndarray, probs: np.ndarray) -> int | None:
    """Feed predictions one request at a time; the count at the first drift verdict."""
    for i in range(len(features)):
        report = detector.update(features[i : i + 1], probs[i : i + 1])
        if report is not None and report.drift:
            return i + 1
    return None


@pytest.mark.parametrize("scenario", ["fashion", "rotate", "invert", "noise"])
def test_shifted_traffic_is_flagged_within_200_predictions(
    scenario: str,
    predictor: Predictor,
    trained_bundle: ModelBundle,
    trained_settings: Settings,
) -> None:
    detector = DriftDetector(trained_bundle.reference(), WINDOW, EVERY, ALPHA)
    clean, _ = scenario_images("clean", trained_settings, 300, seed=1)
    assert _first_alarm(detector, *_stream(predictor, clean)) is None
    shifted, _ = scenario_images(scenario, trained_settings, 400, seed=2)
    alarm = _first_alarm(detector, *_stream(predictor, shifted))
    assert alarm is not None and alarm <= 200, (scenario, alarm)
    assert detector.last is not None and detector.last.drift


def test_clean_traffic_false_alarm_rate_is_at_most_one_percent(
    predictor: Predictor,
    trained_bundle: ModelBundle,
    trained_settings: Settings,
) -> None:
    detector = DriftDetector(trained_bundle.reference(), WINDOW, EVERY, ALPHA)
    images, _ = scenario_images("clean", trained_settings, 10_000, seed=3)
    features, probs = _stream(predictor, images)
    rng = np.random.default_rng(4)
    windows = 400
    alarms = 0
    for _ in range(windows):
        pick = rng.choice(len(features), WINDOW, replace=False)
        alarms += detector.check(features[pick], probs[pick]).drift
    assert alarms / windows <= 0.01, alarms


def test_every_test_is_reported_with_statistic_and_pvalue(
    predictor: Predictor, trained_bundle: ModelBundle, trained_settings: Settings
) -> None:
    detector = DriftDetector(trained_bundle.reference(), WINDOW, EVERY, ALPHA)
    images, _ = scenario_images("clean", trained_settings, 200, seed=5)
    report = detector.check(*_stream(predictor, images))
    names = set(report.tests)
    assert {
        "ks_pixel_mean",
        "ks_pixel_std",
        "ks_ink_fraction",
        "label_chi2",
        "confidence_drop",
    } <= names
    assert {f"bbsd_{d}" for d in range(10)} <= names
    assert report.threshold == pytest.approx(ALPHA / len(names))
    assert all(0.0 <= r.pvalue <= 1.0 for r in report.tests.values())
