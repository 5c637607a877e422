"""How training splits its data: feedback-labelled images are fitted on, never held out
(the validation set and the reference profile computed from it stay MNIST's)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mnistops.train import TrainParams, _split

pytestmark = pytest.mark.unit


def test_extra_images_are_fitted_on_and_never_held_out() -> None:
    mnist = SimpleNamespace(
        x_train=np.zeros((100, 28, 28), np.uint8),
        y_train=np.arange(100, dtype=np.uint8) % 10,
        x_test=np.zeros((10, 28, 28), np.uint8),
        y_test=np.arange(10, dtype=np.uint8),
    )
    inverted = np.full((30, 28, 28), 255, np.uint8)  # unlike any MNIST image here
    splits = _split(mnist, TrainParams(validation_split=0.1), (inverted, np.ones(30, np.uint8)))
    assert len(splits.x_val) == 10 and float(splits.x_val.max()) == 0.0
    assert len(splits.x_fit) == 90 + 30 and float(splits.x_fit.max()) == 1.0
    assert len(splits.y_fit) == len(splits.x_fit) and splits.extra_key
