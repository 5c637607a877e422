"""Training-time distortions of the fast recipe."""

from __future__ import annotations

import numpy as np
import pytest

from mnistops.augment import Distortions, distort

pytestmark = pytest.mark.unit


def _digits(mnist_like: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = np.zeros((mnist_like, 28, 28), dtype=np.float32)
    for i in range(mnist_like):  # a vertical bar at a random column: a crude "1"
        col = int(rng.integers(10, 18))
        images[i, 5:23, col : col + 3] = 1.0
    return images.reshape(mnist_like, 784)


def test_distortions_change_every_image_and_keep_the_range() -> None:
    digits = _digits()
    out = distort(digits, np.random.default_rng(1))
    assert out.shape == digits.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (np.abs(out - digits).sum(axis=1) > 0).all()
    # the ink stays roughly the same amount: a warp, not an eraser
    ratio = out.sum(axis=1) / digits.sum(axis=1)
    assert np.median(ratio) == pytest.approx(1.0, abs=0.35)


def test_the_same_seed_gives_the_same_images() -> None:
    digits = _digits()
    first = distort(digits, np.random.default_rng(7))
    again = distort(digits, np.random.default_rng(7))
    other = distort(digits, np.random.default_rng(8))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_no_distortion_is_the_identity() -> None:
    none = Distortions(0, 0, 0, 0, 0.0, 0, 4, 0.0, 0.0)
    digits = _digits()
    assert np.allclose(distort(digits, np.random.default_rng(0), none), digits, atol=1e-5)


def test_rotation_turns_a_bar() -> None:
    bars = np.repeat(_digits(1), 20, axis=0)
    turned = distort(bars, np.random.default_rng(0), Distortions(30, 0, 0, 0, 0.0, 0, 4, 0, 0))
    # a vertical bar's ink spans 3 columns; turned by up to 30 degrees, up to 12
    spans = [np.ptp(np.argwhere(t.reshape(28, 28) > 0.5)[:, 1]) for t in turned]
    assert np.median(spans) > 4 and max(spans) >= 8
