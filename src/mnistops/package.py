"""A trained Keras model becomes a registered version: its ONNX export (parity-checked),
the reference profile for drift detection, its metadata, logged to MLflow and registered.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistops.bundle import ONNX_FILE, REFERENCE_FILE, ReferenceProfile, write_metadata
from mnistops.config import Settings
from mnistops.export import ExportError, export_onnx, onnx_probabilities
from mnistops.features import FEATURE_NAMES, IMAGE_PIXELS, image_features

PARITY_IMAGES = 2000
"""Test images on which the ONNX export must match Keras."""
PARITY_TOLERANCE = 1e-4
"""Largest absolute difference of probabilities allowed between ONNX and Keras."""
SERVE_REQUIREMENTS = ["keras", "jax", "numpy"]


@dataclass(frozen=True)
class Splits:
    """Model-ready arrays: fit, validation (held out, the drift reference) and test."""

    x_fit: np.ndarray
    y_fit: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    extra_key: str


def register_version(
    settings: Settings,
    model: Any,
    params: dict[str, Any],
    splits: Splits,
    test_probs: np.ndarray,
    work: Path,
    log: Callable[[str], None],
) -> tuple[str, Path]:
    """Export to ONNX (with parity check), add the reference profile and metadata, log and
    register the version; keep a servable copy. Returns the version and that copy.

    Args:
        settings: where the registry and the servable copies live.
        model: the trained Keras model.
        params: the run's hyperparameters (``model`` names the recipe).
        splits: the arrays it was trained, validated and tested on.
        test_probs: Keras' probabilities on ``splits.x_test``.
        work: a scratch folder.
        log: where progress sentences go.

    Raises:
        ExportError: the ONNX export failed or differs from Keras beyond the tolerance.
    """
    import mlflow

    bundle = work / "bundle"
    bundle.mkdir()
    diff = _export_and_check(model, bundle, splits.x_test, test_probs)
    log(f"ONNX parity: max |ONNX - Keras| = {diff:.2e} on {PARITY_IMAGES} test images")
    _write_reference(bundle, splits.x_val, splits.y_val)
    metadata = {
        "name": settings.registered_model,
        "run_id": mlflow.active_run().info.run_id,  # type: ignore[union-attr]
        "model": params["model"],
        "test_accuracy": float((test_probs.argmax(1) == splits.y_test).mean()),
        "input": {"name": "pixels", "shape": [-1, IMAGE_PIXELS], "dtype": "float32"},
        "output": {"name": "probabilities", "shape": [-1, 10], "dtype": "float32"},
        "feature_names": list(FEATURE_NAMES),
        "params": params,
    }
    write_metadata(bundle, metadata)
    version = _log_and_register(settings, model, splits.x_test[:5], bundle)
    kept = settings.models_dir / settings.registered_model / version
    if not kept.exists():
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(bundle, kept)
        write_metadata(kept, {**metadata, "version": version})
    return version, kept


def _export_and_check(
    model: Any, bundle: Path, x_test: np.ndarray, test_probs: np.ndarray
) -> float:
    import mlflow

    export_onnx(model, bundle / ONNX_FILE)
    onnx_probs = onnx_probabilities(bundle / ONNX_FILE, x_test[:PARITY_IMAGES])
    diff = float(np.max(np.abs(onnx_probs - test_probs[:PARITY_IMAGES])))
    mlflow.log_metric("onnx_max_abs_diff", diff)
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"ONNX export differs from Keras by {diff:.2e} (> {PARITY_TOLERANCE})")
    return diff


def _write_reference(bundle: Path, x_val: np.ndarray, y_val: np.ndarray) -> None:
    """The drift reference: features and ONNX softmax outputs on held-out images."""
    ReferenceProfile(
        feature_names=FEATURE_NAMES,
        features=image_features(x_val),
        probabilities=onnx_probabilities(bundle / ONNX_FILE, x_val),
        labels=y_val,
    ).save(bundle / REFERENCE_FILE)


def _log_and_register(settings: Settings, model: Any, example: np.ndarray, bundle: Path) -> str:
    """Log the Keras model (signature, input example) with its ONNX export and reference
    profile; register it as a new version."""
    import types

    import mlflow
    from mlflow.models import Model, infer_signature

    def save_model(path: str, **kwargs: Any) -> None:
        # mlflow.keras.save_model writes the input example before it creates its folder
        # (FileNotFoundError when logging with input_example): create the folder first.
        Path(path).mkdir(parents=True, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)

    keras_flavor = types.SimpleNamespace(save_model=save_model, __name__="mlflow.keras")
    info = Model.log(
        None,
        name="model",
        flavor=keras_flavor,
        model=model,
        signature=infer_signature(example, model.predict(example, verbose=0)),
        input_example=example,
        pip_requirements=SERVE_REQUIREMENTS,
    )
    client = mlflow.MlflowClient()
    client.log_model_artifacts(info.model_id, str(bundle))
    registered = mlflow.register_model(info.model_uri, settings.registered_model)
    return str(registered.version)
