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

    with pytest.raises(ValueError, match="mlp, cnn, fast"):
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


def test_fast_recipe_is_strided_and_small() -> None:
    from mnistops.model import FAST_FILTERS, build_model

    model = build_model("fast", total_steps=100)
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [c.filters for c in convs] == list(FAST_FILTERS)
    assert all(c.strides == (2, 2) for c in convs)
    assert not any("Pooling" in type(layer).__name__ for layer in model.layers)
    assert model.optimizer.use_ema
    assert model.loss.label_smoothing == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"model": "resnet"}, "unknown model 'resnet'; choose one of mlp, cnn, fast"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": 60000}, "batch size 60000 is larger than the 54000 images"),
        ({"learning_rate": 0.0}, "learning rate must be above 0"),
        ({"validation_split": 1.0}, "validation split must be between 0 and 1"),
    ],
)
def test_impossible_hyperparameters_are_refused(given: dict[str, object], message: str) -> None:
    from mnistops.train import TrainError, TrainParams

    with pytest.raises(TrainError, match=message.replace("(", r"\(")):
        TrainParams(**given).check(54000)  # type: ignore[arg-type]


def test_recipe_defaults_fill_what_is_not_given() -> None:
    from mnistops.train import TrainParams

    fast = TrainParams.for_recipe("fast", epochs=None, batch_size=64)
    assert (fast.epochs, fast.batch_size, fast.learning_rate) == (7, 64, 3e-3)
    assert TrainParams.for_recipe("mlp") == TrainParams()
