"""Accuracy estimated without labels (ATC on temperature-scaled confidence) against the
true accuracy, window by window, on shifted streams made from the MNIST test digits.

Each scenario draws windows of ``WINDOW`` test digits (with replacement, a different
draw per window), shifts them, runs them through the champion's ONNX file, and compares
the share of images above the version's ATC threshold with the share predicted right.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bench.results import EstimateResult, EstimateRow
from bench.workspace import HOME, export_champion, log

WINDOW = 500
WINDOWS = 10
Shift = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _rotated(degrees: float) -> Shift:
    def shift(
        x: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        from scipy.ndimage import rotate

        turned = rotate(x, degrees, axes=(1, 2), reshape=False, order=1, mode="constant")
        return np.clip(turned, 0.0, 1.0), y

    return shift


def _noisy(sigma: float) -> Shift:
    def shift(
        x: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        return np.clip(x + rng.normal(0.0, sigma, x.shape), 0.0, 1.0), y

    return shift


def _filtered(kind: str) -> Shift:
    def shift(
        x: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        from scipy import ndimage

        if kind == "blur":
            return ndimage.gaussian_filter(x, sigma=(0, 1.0, 1.0)), y
        grow = ndimage.grey_dilation if kind == "thick" else ndimage.grey_erosion
        return grow(x, size=(1, 2, 2)), y

    return shift


def _mixed(share: float, other: Shift) -> Shift:
    def shift(
        x: np.ndarray, y: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        shifted, _ = other(x, y, rng)
        take = rng.random(len(x)) < share
        return np.where(take[:, None, None], shifted, x), y

    return shift


def _same(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return x, y


SCENARIOS: dict[str, Shift] = {
    "clean": _same,
    "rotated 15°": _rotated(15),
    "rotated 30°": _rotated(30),
    "rotated 45°": _rotated(45),
    "noise σ=0.2": _noisy(0.2),
    "noise σ=0.4": _noisy(0.4),
    "inverted": lambda x, y, rng: (1.0 - x, y),
    "thicker strokes": _filtered("thick"),
    "thinner strokes": _filtered("thin"),
    "blur": _filtered("blur"),
    "30 % rotated 45°": _mixed(0.3, _rotated(45)),
    "10 % noise σ=0.4": _mixed(0.1, _noisy(0.4)),
}
PRIOR_SHIFT = "digits 0-4 only"


def bench_estimate() -> EstimateResult:
    """True and estimated accuracy of every window of every scenario."""
    from mnistops.bundle import load_bundle
    from mnistops.config import load_settings
    from mnistops.data import load_mnist
    from mnistops.features import image_features
    from mnistops.predictor import Predictor

    bundle = load_bundle(export_champion())
    calibration = bundle.calibration()
    assert calibration is not None, "the benchmarks run where training runs, with scipy"
    predictor = Predictor(bundle)
    predictor.load()
    mnist = load_mnist(load_settings(home=HOME))
    x_all = mnist.x_test.astype(np.float32) / 255.0
    y_all = mnist.y_test.astype(np.int64)
    rows = []
    scenarios: dict[str, Shift] = {**SCENARIOS, PRIOR_SHIFT: _same}
    for index, (name, shift) in enumerate(scenarios.items()):
        rng = np.random.default_rng(index)
        pool = np.flatnonzero(y_all < 5) if name == PRIOR_SHIFT else np.arange(len(y_all))
        true, estimated = [], []
        for _ in range(WINDOWS):
            picked = rng.choice(pool, WINDOW)
            x, y = shift(x_all[picked], y_all[picked], rng)
            pixels = x.reshape(len(x), -1).astype(np.float32)
            probs = predictor.predict(pixels)
            true.append(float((probs.argmax(1) == y).mean()))
            estimated.append(calibration.estimate_accuracy(probs, image_features(pixels)) or 0.0)
        row = EstimateRow(
            name,
            float(np.mean(true)),
            float(np.mean(estimated)),
            float(np.mean(np.abs(np.subtract(true, estimated)))),
        )
        log(
            f"  {name}: true {row.true:.3f}, estimated {row.estimated:.3f}, "
            f"mean |error| {row.error * 100:.1f} points"
        )
        rows.append(row)
    return EstimateResult(
        window=WINDOW,
        windows=WINDOWS,
        temperature=calibration.temperature,
        ece_before=calibration.ece_before,
        ece_after=calibration.ece_after,
        rows=rows,
    )
