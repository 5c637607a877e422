"""Per-image statistics shared by training and serving."""

from __future__ import annotations

import numpy as np
import pytest

from mnistops.features import FEATURE_NAMES, image_features

pytestmark = pytest.mark.unit


def test_features_of_known_images() -> None:
    blank = np.zeros((1, 784), dtype=np.float32)
    block = np.zeros((1, 28, 28), dtype=np.float32)
    block[0, 2:4, 10:12] = 1.0
    features = image_features(np.concatenate([blank, block.reshape(1, 784)]))
    assert features.shape == (2, len(FEATURE_NAMES))
    assert features[0].tolist() == [0.0, 0.0, 0.0, 13.5, 13.5]
    mean, std, ink, row, col = features[1]
    assert mean == pytest.approx(4 / 784)
    assert ink == pytest.approx(4 / 784)
    assert std == pytest.approx(np.std(block))
    assert (row, col) == pytest.approx((2.5, 10.5))
