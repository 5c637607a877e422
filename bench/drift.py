"""The drift detector on streams made from real images: the run time between false alarms
on clean MNIST test streams, and the detection delay of each kind of shift.

The champion's ONNX file scores each scenario's images once (the 10,000 MNIST test
digits shifted, or Fashion-MNIST's 10,000 test images); streams are then drawn from
those scores with replacement and fed to the detector serving uses, at the default
expected run time (``drift_ert``).

- **Run time between false alarms**: ``CLEAN_PREDICTIONS`` clean predictions in batches;
  the predictions per alarm (each run of scores above the threshold counts once).
- **Detection delay**: ``REPEATS`` times per scenario, a fresh detector is fed
  ``WARMUP`` clean predictions (its longest window full), then the shifted stream one
  prediction at a time; the delay is the number of shifted predictions until the first
  alarm (a false alarm during the warm-up starts that repeat again; a stream not found
  within ``MAX_DELAY`` counts as missed).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from bench.estimate import PRIOR_SHIFT, SCENARIOS, Shift, _mixed
from bench.results import DriftResult, DriftRow
from bench.workspace import HOME, export_champion, log

if TYPE_CHECKING:
    from mnistops.monitor.drift import DriftDetector

CLEAN_PREDICTIONS = 20_000_000
CLEAN_BATCH = 2_000
REPEATS = 100
WARMUP = 1_000
MAX_DELAY = 5_000
FASHION = "Fashion-MNIST"
TARGETS = {
    FASHION: 100,
    "inverted": 100,
    "rotated 30°": 100,
    "noise σ=0.4": 500,
    PRIOR_SHIFT: 500,
    f"30 % {FASHION}": 1_000,
}
"""Scenario: the 95th percentile of its delay must be at most this (the issue's targets)."""


def bench_drift() -> DriftResult:
    """The false-alarm run time and every scenario's detection delay."""
    from mnistops.bundle import load_bundle
    from mnistops.config import Settings, load_settings
    from mnistops.data import load_fashion, load_mnist
    from mnistops.features import image_features
    from mnistops.monitor.drift import DriftDetector
    from mnistops.predictor import Predictor

    bundle = load_bundle(export_champion())
    reference, calibration = bundle.drift_reference()
    ert = Settings.model_fields["drift_ert"].default
    predictor = Predictor(bundle)
    predictor.load()
    settings = load_settings(home=HOME)
    mnist, fashion = load_mnist(settings), load_fashion(settings)

    def scored(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pixels = x.reshape(len(x), -1).astype(np.float32)
        return image_features(pixels), predictor.predict(pixels)

    x_test = mnist.x_test.astype(np.float32) / 255.0
    y_test = mnist.y_test.astype(np.int64)
    x_fashion = fashion.x_test.astype(np.float32) / 255.0
    clean = scored(x_test)

    def detector() -> DriftDetector:
        return DriftDetector(reference, calibration, ert, report_every=10**9)

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    counting = detector()
    for _ in range(CLEAN_PREDICTIONS // CLEAN_BATCH):
        pick = rng.integers(0, len(y_test), CLEAN_BATCH)
        counting.update(clean[0][pick], clean[1][pick])
    alarms = counting.alarms
    log(
        f"  clean: {alarms} false alarms in {CLEAN_PREDICTIONS:,} predictions "
        f"({time.perf_counter() - started:.0f} s)"
    )

    def fashion_shift(
        x: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        return x_fashion[rng.integers(0, len(x_fashion), len(x))], y

    shifts: dict[str, Shift] = {
        FASHION: fashion_shift,
        **{name: shift for name, shift in SCENARIOS.items() if "%" not in name},
        f"10 % {FASHION}": _mixed(0.1, fashion_shift),
        f"30 % {FASHION}": _mixed(0.3, fashion_shift),
    }
    shifts.pop("clean")
    rows = []
    for index, (name, shift) in enumerate([*shifts.items(), (PRIOR_SHIFT, None)]):
        rng = np.random.default_rng(100 + index)
        if shift is None:  # only the digits 0-4
            pool = np.flatnonzero(y_test < 5)
            features, probs = clean[0][pool], clean[1][pool]
        else:
            shifted, _ = shift(x_test, y_test, rng)
            features, probs = scored(shifted)
        delays = [_delay(detector(), clean, (features, probs), rng) for _ in range(REPEATS)]
        found = np.array([d for d in delays if d is not None])
        row = DriftRow(
            name,
            float(np.median(found)) if len(found) else float("nan"),
            float(np.percentile(found, 95)) if len(found) else float("nan"),
            REPEATS - len(found),
            TARGETS.get(name),
        )
        log(f"  {name}: delay median {row.median:.0f}, p95 {row.p95:.0f}, missed {row.missed}")
        rows.append(row)
    return DriftResult(
        ert=ert,
        threshold=calibration.threshold(ert),
        windows=calibration.windows,
        tolerance=calibration.tolerance,
        clean_predictions=CLEAN_PREDICTIONS,
        clean_alarms=alarms,
        repeats=REPEATS,
        rows=rows,
    )


def _delay(
    detector: DriftDetector,
    clean: tuple[np.ndarray, np.ndarray],
    shifted: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> int | None:
    """Shifted predictions until the first alarm, after a clean warm-up (None: missed)."""
    while True:
        detector.reset(detector.reference, detector.calibration)
        pick = rng.integers(0, len(clean[0]), WARMUP)
        detector.update(clean[0][pick], clean[1][pick])
        if detector.alarms == 0:
            break
    order = rng.integers(0, len(shifted[0]), MAX_DELAY)
    for i, j in enumerate(order):
        detector.update(shifted[0][j : j + 1], shifted[1][j : j + 1])
        if detector.alarms:
            return i + 1
    return None
