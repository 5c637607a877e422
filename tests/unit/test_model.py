"""Architectures: shapes, the lab's exact MLP, calibration metric."""

from __future__ import annotations

import numpy as np
import pytest

from mnistops.evaluate import evaluate, expected_calibration_error

pytestmark = pytest.mark.unit


def test_mlp_is_the_labs_network() -> None:
    from mnistops.model import build_model

    model = build_model("mlp")
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["InputLayer", "Dense", "Dropout", "Dense"]
    assert model.layers[1].units == 512 and model.layers[1].activation.__name__ == "relu"
    assert model.layers[2].rate == pytest.approx(0.2)
    assert model.layers[3].units == 10 and model.layers[3].activation.__name__ == "softmax"
    assert type(model.optimizer).__name__ == "Adam"
    assert model.count_params() == 784 * 512 + 512 + 512 * 10 + 10


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_models_map_flat_pixels_to_probabilities(name: str) -> None:
    from mnistops.model import build_model

    probs = np.asarray(build_model(name)(np.random.rand(3, 784).astype(np.float32)))
    assert probs.shape == (3, 10)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_unknown_model_is_refused_with_choices() -> None:
    from mnistops.model import build_model

    with pytest.raises(ValueError, match="mlp, cnn"):
        build_model("resnet")


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    probs = np.tile(np.eye(10, dtype=np.float32)[0], (4, 1))
    assert expected_calibration_error(probs, np.zeros(4, dtype=np.int64)) == 0.0
    assert expected_calibration_error(probs, np.array([0, 0, 1, 1])) == pytest.approx(0.5)


def test_evaluate_reports_every_class() -> None:
    labels = np.arange(10).repeat(3)
    probs = np.eye(10, dtype=np.float32)[labels] * 0.9 + 0.01
    scores = evaluate(probs, labels)
    assert scores.accuracy == 1.0
    assert {f"f1_{d}" for d in range(10)} <= set(scores.metrics())
