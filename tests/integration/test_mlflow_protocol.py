"""MLflow's own tools on a registered version, and MLflow's scoring protocol against both
servers: ``mlflow.pyfunc.load_model`` runs the ONNX model without Keras or TensorFlow, and
MLflow's scoring client gets the same answers from ``mlflow models serve`` and from
``mnistops serve``."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from bench import servers
from bench.servers import LOOPBACK, free_port

from mnistops.bundle import ModelBundle
from mnistops.calibration import scaled
from mnistops.config import Settings
from mnistops.data import Mnist
from mnistops.export import onnx_probabilities
from mnistops.package import PARITY_TOLERANCE
from tests.support.server import run_server

pytestmark = pytest.mark.integration
DIGITS = 20
SAME = 1e-5
"""Largest difference between two servers' probabilities for the same pixels."""
TRAINING_STACK = ("keras", "tensorflow", "jax", "torch")
LOAD_TIMEOUT_S = 180.0
READY_TIMEOUT_S = 180.0  # `mlflow models serve` takes about 4 s alone, far more on a busy host

LOAD_SCRIPT = """
import json, sys
import numpy as np
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]))["probabilities"])
print(json.dumps(sorted(m for m in sys.argv[4].split(",") if m in sys.modules)))
"""


@pytest.fixture(scope="module")
def digits(mnist: Mnist) -> np.ndarray:
    """Real test digits as float32 ``[N, 784]`` pixels in [0, 1]."""
    return (mnist.x_test[:DIGITS].reshape(DIGITS, -1) / 255).astype(np.float32)


def _version_uri(bundle: ModelBundle) -> str:
    return f"models:/{bundle.name}/{bundle.version}"


def _registry_env(settings: Settings) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}


def test_pyfunc_loads_the_version_as_onnx_without_a_training_framework(
    trained_settings: Settings, trained_bundle: ModelBundle, digits: np.ndarray, tmp_path: Path
) -> None:
    pixels, answer = tmp_path / "pixels.npy", tmp_path / "answer.npy"
    np.save(pixels, digits)
    argv = [_version_uri(trained_bundle), str(pixels), str(answer), ",".join(TRAINING_STACK)]
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, *argv],
        env={**os.environ, **_registry_env(trained_settings)},
        capture_output=True,
        text=True,
        timeout=LOAD_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []
    production = onnx_probabilities(trained_bundle.onnx_path, digits)
    assert np.abs(np.load(answer) - production).max() <= SAME


def test_the_version_holds_onnx_for_pyfunc_and_the_keras_model_beside_it(
    trained_settings: Settings, trained_bundle: ModelBundle, digits: np.ndarray
) -> None:
    import mlflow

    from mnistops.tracking import setup_mlflow

    setup_mlflow(trained_settings)
    uri = _version_uri(trained_bundle)
    info = mlflow.models.get_model_info(uri)
    assert info.flavors["python_function"]["loader_module"] == "mlflow.onnx"
    assert {"onnx", "keras"} <= set(info.flavors)
    (spec,) = info.signature.inputs.inputs
    assert (spec.type, spec.shape) == (np.dtype(np.float32), (-1, 784))
    keras_probs = mlflow.keras.load_model(uri).predict(digits, verbose=0)
    production = onnx_probabilities(trained_bundle.onnx_path, digits)
    # the ONNX model has the version's temperature built in; the Keras model is as trained
    calibrated = scaled(keras_probs, trained_bundle.metadata["temperature"])
    assert np.abs(calibrated - production).max() <= PARITY_TOLERANCE


@contextmanager
def _mlflow_serve(uri: str, port: int, env: dict[str, str], log_path: Path) -> Iterator[None]:
    """``mlflow models serve`` in this environment, stopped (its whole group) on the way out."""
    bin_dir = Path(sys.executable).parent  # it starts `uvicorn` from PATH
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri]
    argv += ["--env-manager", "local", "-h", LOOPBACK, "-p", str(port)]
    environment = {**os.environ, **env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    ready = functools.partial(servers.http_ok, f"http://{LOOPBACK}:{port}/ping")
    with servers.serving(argv, environment, log_path, ready, READY_TIMEOUT_S):
        yield


def _requests(digits: np.ndarray) -> dict[str, Any]:
    """What MLflow's scoring client sends: an array becomes ``inputs``, a frame
    ``dataframe_split`` (with its index); a string goes as it is."""
    frame = pd.DataFrame(digits, columns=[f"pixel_{i}" for i in range(digits.shape[1])])
    return {
        "inputs": digits,
        "dataframe_split": frame,
        "instances": json.dumps({"instances": digits.tolist()}),
        "dataframe_records": json.dumps({"dataframe_records": frame.to_dict(orient="records")}),
    }


def _scoring_client(port: int) -> Any:
    """MLflow's scoring client for a server on ``port``."""
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    return ScoringServerClient(LOOPBACK, port)  # type: ignore[no-untyped-call]  # unannotated


def _probabilities(answer: Any) -> np.ndarray:
    """MLflow's answer: ``probabilities`` (this service adds ``is_digit`` beside them)."""
    assert list(answer) == ["predictions"]
    assert list(answer["predictions"]) in (["probabilities"], ["probabilities", "is_digit"])
    return np.array(answer["predictions"]["probabilities"])


def test_mlflow_scoring_client_gets_the_same_answers_from_both_servers(
    trained_settings: Settings, trained_bundle: ModelBundle, digits: np.ndarray, tmp_path: Path
) -> None:
    uri, env = _version_uri(trained_bundle), _registry_env(trained_settings)
    theirs_port, ours_port = free_port(), free_port()
    with (
        _mlflow_serve(uri, theirs_port, env, tmp_path / "mlflow-serve.log"),
        run_server(uri, ours_port, tmp_path / "mnistops", env) as ours_server,
    ):
        theirs, ours = _scoring_client(theirs_port), _scoring_client(ours_port)
        theirs.ping()
        ours.ping()
        for fmt, data in _requests(digits).items():
            answers = _probabilities(theirs.invoke(data)), _probabilities(ours.invoke(data))
            assert np.abs(answers[0] - answers[1]).max() <= SAME, fmt
        for client in (theirs, ours):  # both refuse an image of 783 pixels as a bad request
            with pytest.raises(Exception, match="error code 400"):
                client.invoke(digits[:, :-1])
        predicted = ours_server.client().post("/predict", json={"images": digits.tolist()})
    production = np.array([p["probabilities"] for p in predicted.json()["predictions"]])
    assert np.abs(answers[1] - production).max() <= SAME
