"""Keras -> ONNX export on the JAX backend (through jax2onnx, no torch), and its parity check.

Keras exports a JAX-backend model with ``model.export(path, format="onnx")``, which
traces the forward pass and converts it with jax2onnx. Two things are mended on the
way to one self-contained file that onnxruntime runs:

- jax2onnx stores large weights in a side file (``model.onnx.data``); the bundle holds
  one file, so the weights are folded back in.
- jax2onnx lowers a pooling window (``lax.reduce_window_max``) to a ``MaxPool`` over
  every axis of the NHWC tensor (four "spatial" axes), which onnxruntime refuses
  ("Unsupported pooling size"). Such a node is rewritten as NHWC -> NCHW, a 2-D
  ``MaxPool``, NCHW -> NHWC: the same numbers, which the parity check then confirms.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistops.bundle import OUTPUT_NAME
from mnistops.errors import MnistopsError
from mnistops.features import IMAGE_PIXELS

EXPORT_BACKEND = "jax"
_NHWC_TO_NCHW = [0, 3, 1, 2]
_NCHW_TO_NHWC = [0, 2, 3, 1]


class ExportError(MnistopsError):
    """The ONNX export failed or does not match the Keras model."""


def export_onnx(model: Any, onnx_path: Path) -> None:
    """Write ``onnx_path`` (one file, dynamic batch axis) from a Keras model on JAX.

    Raises:
        ExportError: the model is not on the JAX backend, or the conversion failed.
    """
    import keras

    if keras.backend.backend() != EXPORT_BACKEND:
        raise ExportError(
            f"ONNX export runs on the {EXPORT_BACKEND} backend, not {keras.backend.backend()}; "
            f"set KERAS_BACKEND={EXPORT_BACKEND}"
        )
    model(np.zeros((2, IMAGE_PIXELS), dtype=np.float32))  # Keras refuses a never-called model
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            model.export(str(raw), format="onnx", verbose=False)
        except Exception as exc:
            raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
        _save_single_file(_name_output(_fix_pooling(_load(raw))), onnx_path)


def _load(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=True)


def _name_output(model: Any) -> Any:
    """Rename the graph's one output to :data:`OUTPUT_NAME` (the numbers are untouched):
    jax2onnx names it after its last operation (``softmax_out_0``), a recipe's internals."""
    (output,) = model.graph.output
    old = output.name
    for node in model.graph.node:
        node.input[:] = [OUTPUT_NAME if name == old else name for name in node.input]
        node.output[:] = [OUTPUT_NAME if name == old else name for name in node.output]
    output.name = OUTPUT_NAME
    return model


def _save_single_file(model: Any, path: Path) -> None:
    import onnx

    onnx.checker.check_model(model)
    onnx.save_model(model, str(path), save_as_external_data=False)


def _fix_pooling(model: Any) -> Any:
    """Rewrite every ``Unsqueeze, Unsqueeze, MaxPool(4-D window), Squeeze`` chain over an
    NHWC tensor into a 2-D ``MaxPool`` between two transposes."""
    graph = model.graph
    nodes = list(graph.node)
    producer = {out: node for node in nodes for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    replaced: dict[str, list[Any]] = {}
    removed: set[str] = set()
    for node in nodes:
        chain = _pool_chain(node, producer, consumers)
        if chain is not None:
            removed.update(part.output[0] for part in chain.parts)
            replaced[node.output[0]] = chain.replacement(node.name or node.output[0])
    kept: list[Any] = []
    for node in nodes:
        key = node.output[0] if node.output else ""
        kept += replaced.get(key, [] if key in removed else [node])
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return model


@dataclass(frozen=True)
class _PoolChain:
    """One NHWC pooling chain as jax2onnx writes it, and its 2-D pooling attributes."""

    parts: tuple[Any, ...]
    source: str
    target: str
    pool: dict[str, Any]

    def replacement(self, base: str) -> list[Any]:
        from onnx import helper

        return [
            helper.make_node("Transpose", [self.source], [f"{base}_nchw"], perm=_NHWC_TO_NCHW),
            helper.make_node("MaxPool", [f"{base}_nchw"], [f"{base}_pooled"], **self.pool),
            helper.make_node("Transpose", [f"{base}_pooled"], [self.target], perm=_NCHW_TO_NHWC),
        ]


def _pool_chain(
    node: Any, producer: dict[str, Any], consumers: dict[str, list[Any]]
) -> _PoolChain | None:
    """The NHWC pooling chain around a ``MaxPool`` node, or None if it is not one."""
    from onnx import helper

    if node.op_type != "MaxPool":
        return None
    attrs = {a.name: list(helper.get_attribute_value(a)) for a in node.attribute}
    kernel = attrs.get("kernel_shape", [])
    if len(kernel) != 4:
        return None
    strides = attrs.get("strides", [1] * 4)
    pads = attrs.get("pads", [0] * 8)
    dilations = attrs.get("dilations", [1] * 4)
    unsq1 = producer.get(node.input[0])
    unsq0 = producer.get(unsq1.input[0]) if unsq1 is not None else None
    if unsq0 is None or unsq1 is None:
        return None
    after = consumers.get(node.output[0], [])
    edges_are_one = all(v[0] == 1 and v[3] == 1 for v in (kernel, strides, dilations))
    if (
        not edges_are_one
        or any(pads[i] for i in (0, 3, 4, 7))
        or unsq1.op_type != "Unsqueeze"
        or unsq0.op_type != "Unsqueeze"
        or len(consumers.get(unsq1.output[0], [])) != 1
        or len(consumers.get(unsq0.output[0], [])) != 1
        or len(after) != 1
        or after[0].op_type != "Squeeze"
    ):
        return None
    pool: dict[str, Any] = {"kernel_shape": kernel[1:3], "strides": strides[1:3]}
    if any(pads):
        pool["pads"] = [pads[1], pads[2], pads[5], pads[6]]
    if any(d != 1 for d in dilations):
        pool["dilations"] = dilations[1:3]
    return _PoolChain((unsq0, unsq1, node, after[0]), unsq0.input[0], after[0].output[0], pool)


def with_temperature(onnx_path: Path, temperature: float) -> None:
    """Rewrite ``onnx_path`` so that it answers ``softmax(log p / T)`` (temperature scaling,
    :mod:`mnistops.calibration`) instead of ``p``: every client of the file, whatever its
    protocol, then reads calibrated confidences. The predicted digit cannot change."""
    import onnx
    from onnx import TensorProto, helper

    model = _load(onnx_path)
    graph = model.graph
    (output,) = graph.output
    raw = f"{output.name}_uncalibrated"
    for node in graph.node:
        node.output[:] = [raw if name == output.name else name for name in node.output]
    graph.initializer.extend(
        [
            helper.make_tensor("calibration_floor", TensorProto.FLOAT, [], [1e-30]),
            helper.make_tensor("calibration_temperature", TensorProto.FLOAT, [], [temperature]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Max", [raw, "calibration_floor"], ["calibration_floored"]),
            helper.make_node("Log", ["calibration_floored"], ["calibration_log"]),
            helper.make_node(
                "Div", ["calibration_log", "calibration_temperature"], ["calibration_logits"]
            ),
            helper.make_node("Softmax", ["calibration_logits"], [output.name], axis=-1),
        ]
    )
    onnx.checker.check_model(model)
    _save_single_file(model, onnx_path)


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
