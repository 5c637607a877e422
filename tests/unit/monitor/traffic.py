"""Tiny synthetic traffic and a reference profile built from the same generator."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mnistops.bundle import ReferenceProfile
from mnistops.features import FEATURE_NAMES, IMAGE_PIXELS, NUM_CLASSES, image_features
from mnistops.monitor.drift import calibrate
from mnistops.monitor.messages import Predictions

QUICK_STREAMS, QUICK_LENGTH = 60, 5_000
CONFIDENT_LOGIT = 6.0
"""Added to the true class's logit: the fake model is right and fairly sure."""


def images(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` float32 images ``[n, 784]``: dark backgrounds with scattered ink."""
    return rng.beta(0.4, 3.0, (n, IMAGE_PIXELS)).astype(np.float32)


def probabilities(rng: np.random.Generator, n: int) -> np.ndarray:
    """Softmax outputs ``[n, 10]`` of a confident model, digits drawn uniformly."""
    logits = rng.normal(0.0, 1.0, (n, NUM_CLASSES))
    logits[np.arange(n), rng.integers(0, NUM_CLASSES, n)] += CONFIDENT_LOGIT
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    softmax: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return softmax.astype(np.float32)


@functools.cache
def profile(seed: int = 0, n: int = 400) -> ReferenceProfile:
    """A reference profile of ``n`` images from the same generator as :func:`traffic`,
    with a quick drift calibration (fewer and shorter streams than training's)."""
    rng = np.random.default_rng(seed)
    pixels, probs = images(rng, n), probabilities(rng, n)
    reference = ReferenceProfile(FEATURE_NAMES, image_features(pixels), probs, probs.argmax(axis=1))
    drift = calibrate(reference, streams=QUICK_STREAMS, length=QUICK_LENGTH, seed=seed)
    return dataclasses.replace(reference, drift=drift)


def traffic(
    seed: int, n: int, *, inverted: bool = False, prefix: str = "r", version: str = "1"
) -> Predictions:
    """``n`` predictions like the reference (or on inverted images: a drift)."""
    rng = np.random.default_rng(seed)
    pixels, probs = images(rng, n), probabilities(rng, n)
    ids = [f"{prefix}{seed}-{i}" for i in range(n)]
    return Predictions.of_call(ids, 1.0 - pixels if inverted else pixels, probs, 0.002, version)
