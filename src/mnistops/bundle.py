"""The servable folder: what a registered version resolves to and what serving loads.

A bundle folder holds three files and needs nothing else:

- ``model.onnx``: input ``[N, 784]`` float32 pixels in ``[0, 1]``, output ``[N, 10]``
  softmax probabilities;
- ``reference.npz``: the reference profile of held-out data for drift detection,
  arrays ``features`` ``[M, F]`` (columns named by ``feature_names``, computed by
  :mod:`mnistops.features`), ``probabilities`` ``[M, 10]`` and ``labels`` ``[M]``, and
  the drift detector's calibration (``drift_windows``, ``drift_tolerance``,
  ``drift_length``, ``drift_maxima``: see :mod:`mnistops.monitor.drift`);
- ``metadata.json``: name, version, run id, architecture and test accuracy.

and, in a version registered by this release, ``model.int8.onnx``, the model statically
quantised to INT8 (:mod:`mnistops.quantize`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistops.errors import MnistopsError
from mnistops.features import FEATURE_NAMES, NUM_CLASSES

log = logging.getLogger("mnistops")

ONNX_FILE = "model.onnx"
REFERENCE_FILE = "reference.npz"
METADATA_FILE = "metadata.json"
BUNDLE_FILES = (ONNX_FILE, REFERENCE_FILE, METADATA_FILE)
MIN_REFERENCE_ROWS = 10
"""Fewer held-out rows than this make no reference for a two-sample test."""
INT8_FILE = "model.int8.onnx"
OPTIONAL_FILES = (INT8_FILE,)
"""Files a bundle may hold besides :data:`BUNDLE_FILES`: the INT8 copy of the model."""
OUTPUT_NAME = "probabilities"
"""The ONNX graph's output, whatever the recipe: metadata.json and MLflow's answers
(``{"predictions": {OUTPUT_NAME: [[...], ...]}}``) carry this name."""


class BundleError(MnistopsError):
    """A model folder is missing a file or holds a malformed one."""


if TYPE_CHECKING:
    from mnistops.calibration import Calibration
    from mnistops.monitor.drift import DriftCalibration


@dataclass(frozen=True)
class ReferenceProfile:
    """Feature and softmax distributions of held-out data, for the drift tests."""

    feature_names: tuple[str, ...]
    features: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray
    drift: DriftCalibration | None = None
    """The drift threshold's calibration (None in a profile written before it was stored)."""

    def save(self, path: Path) -> None:
        """Write the profile as an ``.npz`` file."""
        drift: dict[str, np.ndarray] = {}
        if self.drift is not None:
            drift = {
                "drift_windows": np.array(self.drift.windows, dtype=np.int64),
                "drift_tolerance": np.array(self.drift.tolerance, dtype=np.float64),
                "drift_length": np.array(self.drift.length, dtype=np.int64),
                "drift_maxima": self.drift.maxima.astype(np.float64),
            }
        np.savez_compressed(
            path,
            feature_names=np.array(self.feature_names),
            features=self.features.astype(np.float32),
            probabilities=self.probabilities.astype(np.float32),
            labels=self.labels.astype(np.int64),
            allow_pickle=False,
            **drift,
        )

    def drift_calibration(self) -> DriftCalibration:
        """The stored drift calibration (calibrated now, which takes a few seconds, for a
        version registered before it was stored)."""
        from mnistops.monitor.drift import calibrate as calibrate_drift

        if self.drift is not None:
            return self.drift
        log.warning("this version's reference has no drift calibration: calibrating it now")
        return calibrate_drift(self)

    @classmethod
    def load(cls, path: Path) -> ReferenceProfile:
        """Read a profile written by :meth:`save`.

        Raises:
            BundleError: the file is missing, corrupt or lacks an array.
        """
        try:
            with np.load(path, allow_pickle=False) as data:
                profile = cls(
                    feature_names=tuple(str(n) for n in data["feature_names"]),
                    features=data["features"],
                    probabilities=data["probabilities"],
                    labels=data["labels"],
                    drift=_stored_drift_calibration(data),
                )
            _check_profile(profile)
            return profile
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise BundleError(
                f"{path} is not a reference profile ({exc}); "
                "write the folder again with `mnistops export`"
            ) from exc


def _check_profile(profile: ReferenceProfile) -> None:
    """Refuse a profile whose arrays do not fit together: the monitor process would fail on
    every message (a crash loop behind a server that says it is ready).

    Raises:
        ValueError: what does not fit.
    """
    rows, columns = len(profile.labels), len(profile.feature_names)
    if profile.feature_names != FEATURE_NAMES:
        raise ValueError(
            f"its features ({', '.join(profile.feature_names)}) are not the ones the "
            f"monitor computes ({', '.join(FEATURE_NAMES)})"
        )
    if rows < MIN_REFERENCE_ROWS:
        raise ValueError(f"it has {rows} rows; the drift tests need at least {MIN_REFERENCE_ROWS}")
    expected = {
        "features": (rows, columns),
        "probabilities": (rows, NUM_CLASSES),
        "labels": (rows,),
    }
    for name, shape in expected.items():
        array = getattr(profile, name)
        if array.shape != shape:
            raise ValueError(f"its {name} are {array.shape}, not {shape}")
        if array.dtype.kind not in "iuf" or not np.isfinite(array).all():
            raise ValueError(f"its {name} are not all finite numbers")
    probabilities, labels = profile.probabilities, profile.labels
    if probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError("its probabilities are not all in [0, 1]")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES or (labels != labels.round()).any():
        raise ValueError(f"its labels are not all digits 0-{NUM_CLASSES - 1}")


def _stored_drift_calibration(data: Any) -> DriftCalibration | None:
    """The stored drift calibration of an opened profile (None when it has none)."""
    from mnistops.monitor.drift import DriftCalibration

    if "drift_maxima" not in data.files:
        return None
    maxima = np.asarray(data["drift_maxima"], dtype=np.float64)
    windows = tuple(int(w) for w in data["drift_windows"])
    if not len(maxima) or not np.isfinite(maxima).all() or not windows or min(windows) < 1:
        raise ValueError("its drift calibration is malformed")
    return DriftCalibration(
        windows, float(data["drift_tolerance"]), int(data["drift_length"]), maxima
    )


@dataclass(frozen=True)
class ModelBundle:
    """A local servable folder and what its metadata says."""

    path: Path
    name: str
    version: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def onnx_path(self) -> Path:
        return self.path / ONNX_FILE

    def model_path(self, precision: str = "fp32") -> Path:
        """The ONNX file of ``precision`` ("fp32" or "int8").

        Raises:
            BundleError: this version has no INT8 copy.
        """
        if precision == "fp32":
            return self.onnx_path
        path = self.path / INT8_FILE
        if not path.is_file():
            raise BundleError(
                f"{self.path} has no {INT8_FILE} (a version registered before INT8 copies "
                "were made): train a new version, or serve with MNISTOPS_PRECISION=fp32"
            )
        return path

    @property
    def reference_path(self) -> Path:
        return self.path / REFERENCE_FILE

    def reference(self) -> ReferenceProfile:
        """Load the reference profile stored with this version."""
        return ReferenceProfile.load(self.reference_path)

    def drift_reference(self) -> tuple[ReferenceProfile, DriftCalibration]:
        """The reference profile and its drift calibration."""
        reference = self.reference()
        return reference, reference.drift_calibration()

    def calibration(self) -> Calibration | None:
        """The temperature and ATC threshold stored with this version (fitted now, from
        its reference profile, for a version registered before they were stored; None
        when that needs scipy and this is a serving-only install without it)."""
        from mnistops.calibration import Calibration, calibrate

        stored = self.metadata.get("calibration")
        if isinstance(stored, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                return Calibration.from_dict(stored)
        reference = self.reference()
        try:
            return calibrate(reference.probabilities, reference.labels, reference.features)
        except ImportError:
            return None


def write_metadata(folder: Path, metadata: dict[str, Any]) -> None:
    """Write ``metadata.json`` into a bundle folder."""
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))


def load_bundle(folder: Path) -> ModelBundle:
    """Open a bundle folder, checking that every file is there.

    Raises:
        BundleError: a file is missing or the metadata is not valid JSON.
    """
    folder = Path(folder)
    missing = [name for name in BUNDLE_FILES if not (folder / name).is_file()]
    if missing:
        raise BundleError(
            f"{folder} is not a model folder (missing {', '.join(missing)}); "
            f"`mnistops export` writes one with {', '.join(BUNDLE_FILES)}"
        )
    try:
        metadata = json.loads((folder / METADATA_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(
            f"{folder / METADATA_FILE} is not valid JSON ({exc}); "
            "write the folder again with `mnistops export`"
        ) from exc
    return ModelBundle(
        path=folder,
        name=str(metadata.get("name", "mnist-classifier")),
        version=str(metadata.get("version", "local")),
        metadata=metadata,
    )
