"""Predictor: load an ONNX model once, predict many batches (onnxruntime only)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from mnistops.bundle import BundleError, ModelBundle
from mnistops.calibration import Calibration
from mnistops.errors import first_line
from mnistops.features import IMAGE_PIXELS, NUM_CLASSES, image_features


class Answer(NamedTuple):
    """What a version says about a batch of images."""

    probabilities: np.ndarray
    """``[N, 10]`` float32."""
    is_digit: np.ndarray
    """``[N]`` bool: whether each image looks like a digit at all."""

    def rows(self, start: int, stop: int) -> Answer:
        return Answer(self.probabilities[start:stop], self.is_digit[start:stop])


class Predictor:
    """An onnxruntime session over one model bundle.

    ``predict`` takes float32 ``[N, 784]`` pixels in ``[0, 1]`` and returns float32
    ``[N, 10]`` probabilities. It is safe to call from several threads at once.
    """

    def __init__(
        self, bundle: ModelBundle, *, intra_op_threads: int = 1, precision: str = "fp32"
    ) -> None:
        self.bundle = bundle
        self.precision = precision
        self._threads = intra_op_threads
        self._session: object | None = None
        self._input_name = ""
        stored = bundle.metadata.get("calibration")
        self._calibration: Calibration | None = None
        if isinstance(stored, dict) and stored.get("digit_mean"):
            self._calibration = Calibration.from_dict(stored)

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def version(self) -> str:
        return self.bundle.version

    def load(self) -> None:
        """Create the inference session and run one warm-up batch.

        Raises:
            BundleError: the ONNX file is corrupt or does not take ``[N, 784]`` pixels.
        """
        try:
            path = self.bundle.model_path(self.precision)
            self._session = self._open_session(path)
            self.predict(np.zeros((1, IMAGE_PIXELS), dtype=np.float32))
        # onnxruntime's errors share no base class narrower than Exception
        except BundleError:
            raise
        except Exception as exc:
            self._session = None
            raise BundleError(
                f"{self.bundle.model_path(self.precision)} is not a model onnxruntime can run "
                f"({first_line(exc)}); write the folder again with `mnistops export`"
            ) from exc

    def _open_session(self, path: Path) -> object:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input_name = session.get_inputs()[0].name
        return session

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for a batch of images.

        Args:
            pixels: ``[N, 784]`` float32, values in ``[0, 1]``.

        Returns:
            ``[N, 10]`` float32 softmax probabilities.
        """
        if self._session is None:
            raise RuntimeError("Predictor.load() must be called before predict()")
        batch = np.ascontiguousarray(pixels, dtype=np.float32).reshape(-1, IMAGE_PIXELS)
        (probs,) = self._session.run(None, {self._input_name: batch})  # type: ignore[attr-defined]
        return np.asarray(probs, dtype=np.float32).reshape(-1, NUM_CLASSES)

    def answer(self, pixels: np.ndarray) -> Answer:
        """Probabilities and "is it a digit" for a batch (what every served route needs:
        one call per batch, the input statistics computed once for all its images)."""
        probs = self.predict(pixels)
        return Answer(probs, self.is_digit(pixels, probs))

    def is_digit(self, pixels: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Per image, whether it looks like a digit at all (the version's "not a digit"
        thresholds, fitted on held-out data at training time; True for a version that was
        registered without them)."""
        if self._calibration is None:
            return np.ones(len(probs), dtype=bool)
        features = image_features(np.asarray(pixels).reshape(-1, IMAGE_PIXELS))
        return self._calibration.is_digit(probs, features)
