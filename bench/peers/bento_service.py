"""BentoML's service for the peers suite: a batchable API over onnxruntime and the ONNX file
mnistops serves (the path in the environment variable ``PEER_MODEL``).

Served by ``bentoml serve bento_service:MnistOnnx`` in its own environment. BentoML's API
takes one argument per JSON field and, being batchable, a batch: one image is
``{"image": [[784 floats]]}``, and BentoML gathers concurrent requests along the first
dimension (adaptive batching, at most ``max_batch_size`` images, ``max_latency_ms`` the
latency it aims to keep under). The answer is the probabilities, ``[[10 floats]]``.
The suite sets the workers and batching through ``PEER_WORKERS``, ``PEER_MAX_BATCH_SIZE``
and ``PEER_MAX_LATENCY_MS``.
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import onnxruntime as ort

PIXELS = 784
MODEL_VARIABLE = "PEER_MODEL"
WORKERS = int(os.environ.get("PEER_WORKERS", "1"))
MAX_BATCH_SIZE = int(os.environ.get("PEER_MAX_BATCH_SIZE", "64"))
MAX_LATENCY_MS = int(os.environ.get("PEER_MAX_LATENCY_MS", "1000"))


@bentoml.service(workers=WORKERS, logging={"access": {"enabled": False}})
class MnistOnnx:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = os.environ[MODEL_VARIABLE]
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @bentoml.api(  # type: ignore[untyped-decorator]  # BentoML is not installed where mypy runs
        batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS
    )
    def predict(self, image: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(image, dtype=np.float32).reshape(-1, PIXELS)
        (probs,) = self.session.run(None, {self.input_name: batch})
        return np.asarray(probs)
