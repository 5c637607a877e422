"""Training into a real (temporary, SQLite) MLflow store: the run, registry, resume, seeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.data import Mnist
from mnistops.train import TrainParams, TrainResult, train

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

pytestmark = pytest.mark.integration

PARAMS = ("model", "epochs", "batch_size", "learning_rate", "validation_split", "seed", "limit")
SeededRuns = tuple[Settings, TrainResult, TrainResult]
"""The settings of the store, and the first and second run of the same params."""


def _client(settings: Settings) -> MlflowClient:
    from mnistops.tracking import setup_mlflow

    return setup_mlflow(settings)


def _latest_run(settings: Settings) -> Run:
    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.experiment)
    assert experiment is not None, settings.experiment
    return client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])[0]


def test_run_logs_params_metrics_and_artifacts(trained_settings: Settings) -> None:
    run = _latest_run(trained_settings)
    assert set(PARAMS) <= set(run.data.params)
    assert run.data.params["limit"] == "12000" and run.data.params["epochs"] == "2"
    for key in ("test_accuracy", "test_loss", "ece", "onnx_max_abs_diff", "f1_7", "recall_3"):
        assert key in run.data.metrics
    assert run.data.metrics["onnx_max_abs_diff"] <= 1e-4
    assert run.data.metrics["test_accuracy"] > 0.85
    tags = run.data.tags
    assert tags["keras_backend"] == "jax" and tags["keras_version"].startswith("3.")
    assert len(tags["data_fingerprint"]) == 64
    client = _client(trained_settings)
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert artifacts == {
        f"evaluation/{n}"
        for n in (
            "confusion_matrix.png",
            "learning_curves.png",
            "misclassified.png",
            "classification_report.json",
        )
    }


def test_registered_version_holds_onnx_and_reference(
    trained_settings: Settings, trained_bundle: ModelBundle, mnist: Mnist
) -> None:
    from mnistops.export import onnx_probabilities
    from mnistops.features import FEATURE_NAMES

    assert trained_bundle.version == "1"
    reference = trained_bundle.reference()
    assert reference.feature_names == FEATURE_NAMES
    assert reference.features.shape == (1200, len(FEATURE_NAMES))
    assert reference.probabilities.shape == (1200, 10)
    pixels = mnist.x_test[:500].reshape(500, 784).astype(np.float32) / 255
    accuracy = (
        onnx_probabilities(trained_bundle.onnx_path, pixels).argmax(1) == mnist.y_test[:500]
    ).mean()
    assert accuracy > 0.85
    import mlflow

    info = mlflow.models.get_model_info("models:/mnist-classifier/1")
    assert "keras" in info.flavors
    assert info.signature is not None and info.saved_input_example_info is not None


@pytest.fixture(scope="module")
def two_seeded_runs(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> SeededRuns:
    """The same params trained twice into one store: first with a low floor, then a high one."""
    home = tmp_path_factory.mktemp("two-runs")
    params = TrainParams(epochs=1, limit=3000, seed=7)
    low = Settings(home=home, mnist_dir=mnist_dir, accuracy_floor=0.5)
    first = train(low, params, log=lambda _: None)
    high = low.model_copy(update={"accuracy_floor": 0.999})
    second = train(high, params, log=lambda _: None)
    return high, first, second


def test_same_seed_gives_same_accuracy(two_seeded_runs: SeededRuns) -> None:
    _, first, second = two_seeded_runs
    assert abs(first.test_accuracy - second.test_accuracy) <= 0.001
    assert first.run_id != second.run_id


def test_gate_keeps_champion_and_tags_the_decision(two_seeded_runs: SeededRuns) -> None:
    from mnistops.registry import promote, rollback

    settings, first, second = two_seeded_runs
    assert (first.version, first.decision) == ("1", "champion")
    assert second.decision == "challenger" and "below the floor" in second.reason
    client = _client(settings)

    def alias(name: str) -> str:
        return str(client.get_model_version_by_alias("mnist-classifier", name).version)

    assert client.get_model_version("mnist-classifier", "2").tags["gate.decision"] == "challenger"
    assert (alias("challenger"), alias("champion")) == ("2", "1")
    promote(settings, "2")
    assert alias("champion") == "2"
    assert "back from version 2 to version 1" in rollback(settings)
    assert alias("champion") == "1"


def test_killed_training_resumes_from_last_epoch(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    env = {
        **os.environ,
        "MNISTOPS_HOME": str(settings.home),
        "MNISTOPS_MNIST_DIR": str(settings.mnist_dir),
    }
    command = [sys.executable, "-m", "mnistops.cli", "train", "--epochs", "6", "--limit", "20000"]
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    states = settings.checkpoint_dir
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            found = list(states.glob("*/state.json"))
            if found and json.loads(found[0].read_text())["epoch"] >= 1:
                break
            assert child.poll() is None, "training ended before it could be killed"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
    killed_at = json.loads(found[0].read_text())
    assert 1 <= killed_at["epoch"] < 6
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Resuming run {killed_at['run_id']} from epoch {killed_at['epoch'] + 1}" in done.stdout
    client = _client(settings)
    history = client.get_metric_history(killed_at["run_id"], "accuracy")
    assert sorted({m.step for m in history}) == [1, 2, 3, 4, 5, 6]
    assert not list(states.glob("*/state.json")), "checkpoint kept after a finished run"
    resumed = client.get_run(killed_at["run_id"]).data.metrics["test_accuracy"]
    whole = train(settings, TrainParams.for_recipe(epochs=6, limit=20000), log=lambda _: None)
    assert abs(resumed - whole.test_accuracy) <= 0.002  # within 0.2 points of a run never killed


@pytest.mark.slow
def test_lab_recipe_reaches_lab_accuracy(make_settings: Callable[..., Settings]) -> None:
    result = train(make_settings(), TrainParams(), log=lambda _: None)
    assert result.test_accuracy >= 0.978


def test_a_version_is_calibrated_and_carries_an_int8_copy(
    trained_settings: Settings, trained_bundle: ModelBundle, mnist: Mnist
) -> None:
    """The temperature is inside model.onnx, whose test-set ECE is logged; model.int8.onnx
    lies beside it with its figures, and serving runs it when asked."""
    from mnistops.bundle import INT8_FILE
    from mnistops.evaluate import expected_calibration_error
    from mnistops.export import onnx_probabilities
    from mnistops.predictor import Predictor

    metadata = trained_bundle.metadata
    pixels = mnist.x_test.reshape(-1, 784).astype(np.float32) / 255
    served = onnx_probabilities(trained_bundle.onnx_path, pixels)
    assert expected_calibration_error(served, mnist.y_test) == pytest.approx(
        metadata["test_ece"], abs=1e-4
    )
    assert metadata["test_ece"] <= 0.02 and metadata["temperature"] != pytest.approx(1.0)
    assert (trained_bundle.path / INT8_FILE).is_file()
    int8 = metadata["int8"]
    assert int8["agreement"] > 0.97 and int8["max_abs_diff"] < 0.5
    assert abs(int8["test_accuracy"] - int8["fp32_test_accuracy"]) < 0.01
    quantised = Predictor(trained_bundle, precision="int8")
    quantised.load()
    accuracy = (quantised.predict(pixels).argmax(1) == mnist.y_test).mean()
    assert accuracy == pytest.approx(int8["test_accuracy"], abs=1e-6)
    run = _client(trained_settings).get_run(metadata["run_id"])
    assert {"test_ece_calibrated", "int8_test_accuracy", "temperature"} <= set(run.data.metrics)
