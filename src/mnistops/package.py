"""A trained Keras model becomes a registered version: its ONNX export (parity-checked),
the reference profile for drift detection, its metadata, logged to MLflow and registered.

A version is one MLflow model with three flavours, so that MLflow's own tools serve what
production serves: ``python_function`` and ``onnx`` (MLflow's ONNX flavour over
``model.onnx``: ``mlflow.pyfunc.load_model`` and ``mlflow models serve`` run it through
onnxruntime, without Keras or TensorFlow), and ``keras`` (the trained model, in ``keras/``,
itself a complete MLflow Keras model). ``reference.npz`` and ``metadata.json`` lie beside
``model.onnx`` at the version's root, where :mod:`mnistops.registry` reads the bundle.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistops.bundle import (
    BUNDLE_FILES,
    INT8_FILE,
    ONNX_FILE,
    OPTIONAL_FILES,
    OUTPUT_NAME,
    REFERENCE_FILE,
    ReferenceProfile,
    write_metadata,
)
from mnistops.calibration import calibrate
from mnistops.config import Settings
from mnistops.evaluate import expected_calibration_error
from mnistops.export import ExportError, export_onnx, onnx_probabilities
from mnistops.features import FEATURE_NAMES, IMAGE_PIXELS, NUM_CLASSES, image_features

PARITY_IMAGES = 2000
"""Test images on which the ONNX export must match Keras."""
PARITY_TOLERANCE = 1e-4
"""Largest absolute difference of probabilities allowed between ONNX and Keras."""
INPUT_NAME = "pixels"
KERAS_FOLDER = "keras"
"""The Keras model inside a version: an MLflow Keras model of its own."""
KERAS_REQUIREMENTS = ["keras", "jax", "numpy"]
ONNX_PROVIDERS = ["CPUExecutionProvider"]
"""onnxruntime's providers for MLflow's loader: production's (MLflow's default asks for
CUDA first and warns on every load where it is missing)."""


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
    temperature, test_ece = _calibrate_graph(bundle, splits, test_probs)
    log(
        f"temperature {temperature:.3f} built into model.onnx: test ECE "
        f"{expected_calibration_error(test_probs, splits.y_test):.4f} -> {test_ece:.4f}"
    )
    int8 = _quantise(bundle, splits)
    log(
        f"INT8: test accuracy {int8.test_accuracy:.4f} (FP32 {int8.fp32_test_accuracy:.4f}), "
        f"max |INT8 - FP32| = {int8.max_abs_diff:.2e}, same digit on {int8.agreement:.2%}"
    )
    reference = _write_reference(bundle, splits.x_val, splits.y_val)
    # fitted on the calibrated outputs: its own temperature is ~1; its ATC threshold and
    # held-out ranges are what the monitor's accuracy estimate uses
    calibration = calibrate(reference.probabilities, reference.labels, reference.features)
    assert reference.drift is not None
    drift_threshold = reference.drift.threshold(settings.drift_ert)
    mlflow.log_metrics(
        {
            "temperature": temperature,
            "test_ece_calibrated": test_ece,
            "ece_calibrated": calibration.ece_after,
            "atc_threshold": calibration.atc_threshold,
            "drift_threshold": drift_threshold,
        }
    )
    log(
        f"drift: threshold {drift_threshold:.2f} for one false alarm per "
        f"{settings.drift_ert:,} predictions ({len(reference.drift.maxima)} bootstrap streams)"
    )
    log(f"calibration: held-out ECE of the served outputs {calibration.ece_before:.4f}")
    metadata = {
        "name": settings.registered_model,
        "run_id": mlflow.active_run().info.run_id,  # type: ignore[union-attr]
        "model": params["model"],
        "test_accuracy": float((test_probs.argmax(1) == splits.y_test).mean()),
        "input": {"name": INPUT_NAME, "shape": [-1, IMAGE_PIXELS], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": [-1, NUM_CLASSES], "dtype": "float32"},
        "feature_names": list(FEATURE_NAMES),
        "params": params,
        "calibration": calibration.as_dict(),
        "temperature": temperature,
        "test_ece": test_ece,
        "onnx_max_abs_diff": diff,
        "int8": int8.as_dict(),
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


def _calibrate_graph(bundle: Path, splits: Splits, test_probs: np.ndarray) -> tuple[float, float]:
    """Fit the temperature on the held-out images, build it into ``model.onnx`` and check
    the rewritten graph against the scaled Keras outputs. Returns the temperature and the
    test set's expected calibration error after scaling."""
    from mnistops.calibration import fit_temperature, scaled
    from mnistops.export import with_temperature

    onnx_path = bundle / ONNX_FILE
    temperature = fit_temperature(onnx_probabilities(onnx_path, splits.x_val), splits.y_val)
    with_temperature(onnx_path, temperature)
    expected = scaled(test_probs, temperature)
    diff = float(np.max(np.abs(onnx_probabilities(onnx_path, splits.x_test) - expected)))
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(
            f"the calibrated ONNX model differs from Keras by {diff:.2e} (> {PARITY_TOLERANCE})"
        )
    return temperature, expected_calibration_error(expected, splits.y_test)


def _quantise(bundle: Path, splits: Splits) -> Any:
    """Write the INT8 copy (calibrated on training images), log and return its figures."""
    import mlflow

    from mnistops.quantize import compare, quantise

    try:
        quantise(bundle / ONNX_FILE, bundle / INT8_FILE, splits.x_fit)
    except Exception as exc:  # onnxruntime's quantiser raises bare exceptions
        raise ExportError(f"INT8 quantisation failed: {type(exc).__name__}: {exc}") from exc
    figures = compare(bundle / ONNX_FILE, bundle / INT8_FILE, splits.x_test, splits.y_test)
    mlflow.log_metrics({f"int8_{k}": v for k, v in figures.as_dict().items()})
    return figures


def _write_reference(bundle: Path, x_val: np.ndarray, y_val: np.ndarray) -> ReferenceProfile:
    """The drift reference: features and ONNX softmax outputs on held-out images, and the
    drift threshold's calibration on them."""
    from mnistops.monitor.drift import calibrate as calibrate_drift

    reference = ReferenceProfile(
        feature_names=FEATURE_NAMES,
        features=image_features(x_val),
        probabilities=onnx_probabilities(bundle / ONNX_FILE, x_val),
        labels=y_val,
    )
    reference = dataclasses.replace(reference, drift=calibrate_drift(reference))
    reference.save(bundle / REFERENCE_FILE)
    return reference


def _log_and_register(settings: Settings, model: Any, example: np.ndarray, bundle: Path) -> str:
    """Log the version (see the module's docstring) with its signature and input example,
    and register it."""
    import mlflow
    from mlflow.models import Model

    files = _VersionFiles(model, bundle, settings.intra_op_threads)
    info = Model.log(
        None, name="model", flavor=files, signature=_signature(), input_example=example
    )
    registered = mlflow.register_model(info.model_uri, settings.registered_model)
    return str(registered.version)


def _signature() -> Any:
    """float32 ``[-1, 784]`` pixels in, float32 ``[-1, 10]`` probabilities out.

    The input is unnamed: MLflow then takes a bare tensor (``inputs``, ``instances``) and a
    784-column frame (``dataframe_split``, ``dataframe_records``) alike.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, IMAGE_PIXELS))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES), OUTPUT_NAME)]),
    )


@dataclass(frozen=True)
class _VersionFiles:
    """The flavour ``Model.log`` calls to write a version's folder."""

    keras_model: Any
    bundle: Path
    intra_op_threads: int
    __name__ = "mlflow.onnx"
    """How MLflow labels the logged model's flavour."""

    def save_model(
        self, path: str, mlflow_model: Any, signature: Any, input_example: Any, **kwargs: Any
    ) -> None:
        """Write the ONNX flavour, the bundle's files and the Keras model into ``path``."""
        import mlflow.onnx
        import onnx
        from mlflow.models.model import MLMODEL_FILE_NAME

        root = Path(path)
        mlflow.onnx.save_model(
            onnx.load(str(self.bundle / ONNX_FILE)),
            path,
            mlflow_model=mlflow_model,
            signature=signature,
            input_example=input_example,
            pip_requirements=mlflow.onnx.get_default_pip_requirements(),
            onnx_execution_providers=ONNX_PROVIDERS,
            onnx_session_options=self._session_options(),
            save_as_external_data=False,  # one file, as the bundle holds it
            **kwargs,
        )
        # model.onnx too: byte for byte the parity-checked file
        for name in BUNDLE_FILES + OPTIONAL_FILES:
            shutil.copy2(self.bundle / name, root / name)
        _add_keras(self.keras_model, root, mlflow_model, signature)
        files = (f for f in root.rglob("*") if f.is_file())
        mlflow_model.model_size_bytes = sum(f.stat().st_size for f in files)
        mlflow_model.save(str(root / MLMODEL_FILE_NAME))

    def _session_options(self) -> dict[str, int]:
        """The threads production's Predictor gives onnxruntime."""
        return {"intra_op_num_threads": self.intra_op_threads, "inter_op_num_threads": 1}


def _add_keras(model: Any, root: Path, mlflow_model: Any, signature: Any) -> None:
    """Save the Keras model as an MLflow Keras model in ``keras/``, and list its flavour in
    the version's MLmodel too, so that ``mlflow.keras.load_model`` on the version finds it."""
    import mlflow.keras
    from mlflow.models import Model
    from mlflow.models.model import MLMODEL_FILE_NAME

    folder = root / KERAS_FOLDER
    mlflow.keras.save_model(
        model, str(folder), signature=signature, pip_requirements=KERAS_REQUIREMENTS
    )
    flavor = Model.load(str(folder / MLMODEL_FILE_NAME)).flavors["keras"]
    mlflow_model.add_flavor("keras", **{**flavor, "data": f"{KERAS_FOLDER}/{flavor['data']}"})
