"""INT8: a statically quantised copy of a version's ONNX model (onnxruntime's quantisation).

Weights and activations of the convolutions and matrix products become 8-bit integers
(QDQ format; activations' ranges calibrated on training images, weights per channel, in 7
bits: on a CPU without VNNI, onnxruntime's 8-bit products saturate, which cost the fast
recipe 0.2 points of accuracy at 8 bits and 0.02 at 7);
the calibration tail (log, temperature, softmax) stays in float. The copy is checked
against the FP32 model on test images: its accuracy and largest difference of
probabilities are stored in the version's metadata, and serving runs it when
``MNISTOPS_PRECISION=int8``.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistops.export import onnx_probabilities

CALIBRATION_IMAGES = 1000
QUANTISED_OPS = ["Conv", "MatMul", "Gemm"]


@dataclass(frozen=True)
class QuantisedFigures:
    """How the INT8 model compares with the FP32 one on the test set."""

    test_accuracy: float
    fp32_test_accuracy: float
    max_abs_diff: float
    agreement: float
    """Share of test images given the same digit by both."""

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def quantise(fp32_path: Path, int8_path: Path, calibration_pixels: np.ndarray) -> None:
    """Write ``int8_path``, the static INT8 quantisation of ``fp32_path``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pixels = calibration_pixels[:CALIBRATION_IMAGES].astype(np.float32)

    class Batches(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no types
        def __init__(self, name: str) -> None:
            self.batches = iter([{name: pixels[i : i + 100]} for i in range(0, len(pixels), 100)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    import onnxruntime as ort

    name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    input_name = name.get_inputs()[0].name
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            Batches(input_name),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTISED_OPS,
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def compare(
    fp32_path: Path, int8_path: Path, pixels: np.ndarray, labels: np.ndarray
) -> QuantisedFigures:
    """The INT8 model's figures against the FP32 one's on ``pixels``."""
    fp32 = onnx_probabilities(fp32_path, pixels)
    int8 = onnx_probabilities(int8_path, pixels)
    return QuantisedFigures(
        test_accuracy=float((int8.argmax(1) == labels).mean()),
        fp32_test_accuracy=float((fp32.argmax(1) == labels).mean()),
        max_abs_diff=float(np.max(np.abs(int8 - fp32))),
        agreement=float((int8.argmax(1) == fp32.argmax(1)).mean()),
    )
