"""Keras -> ONNX export, run on the torch backend in a child process, and its parity check.

Keras exports ONNX natively only from the torch (and TensorFlow) backend; a ``.keras``
file trained on any backend loads there. Running the export in a child process keeps
the training process on its own backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mnistops.features import IMAGE_PIXELS

EXPORT_BACKEND = "torch"


class ExportError(RuntimeError):
    """The ONNX export failed or does not match the Keras model."""


def export_onnx(keras_path: Path, onnx_path: Path, *, timeout: float = 600) -> None:
    """Write ``onnx_path`` from a saved ``.keras`` model (dynamic batch axis).

    Raises:
        ExportError: the child process failed; its output is in the message.
    """
    env = {**os.environ, "KERAS_BACKEND": EXPORT_BACKEND}
    command = [sys.executable, "-m", "mnistops.export", str(keras_path), str(onnx_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not onnx_path.is_file():
        raise ExportError(f"ONNX export failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def onnx_probabilities(onnx_path: Path, pixels: np.ndarray) -> np.ndarray:
    """Run an ONNX model on ``[N, 784]`` pixels with onnxruntime."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (probs,) = session.run(None, {name: pixels.astype(np.float32)})
    return np.asarray(probs)


def parity(onnx_path: Path, keras_probs: np.ndarray, pixels: np.ndarray) -> float:
    """Largest absolute difference between ONNX and Keras probabilities."""
    return float(np.max(np.abs(onnx_probabilities(onnx_path, pixels) - keras_probs)))


def _main(keras_path: str, onnx_path: str) -> None:
    import keras

    model = keras.saving.load_model(keras_path)
    model(np.zeros((2, IMAGE_PIXELS), dtype=np.float32))  # Keras refuses a never-called model
    model.export(onnx_path, format="onnx", verbose=False)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
