"""MLServer's custom runtime for the peers suite: the ONNX file mnistops serves, through
onnxruntime, behind MLServer's Open Inference Protocol.

MLServer imports it as ``mlserver_model.OnnxModel`` (model-settings.json's
``implementation``) in its own environment; ``parameters.uri`` is the ONNX file. The one
input tensor is float32 ``[N, 784]`` in [0, 1]; the one output is ``probabilities``
``[N, 10]``. Adaptive batching (``max_batch_size``/``max_batch_time``) hands ``predict``
several requests' tensors joined along the first dimension.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri

PIXELS = 784
OUTPUT = "probabilities"


class OnnxModel(MLModel):  # type: ignore[misc]  # MLServer is not installed where mypy runs
    """One onnxruntime session, one thread per call (as mnistops runs it)."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        pixels = NumpyCodec.decode_input(payload.inputs[0])
        batch = np.ascontiguousarray(pixels, dtype=np.float32).reshape(-1, PIXELS)
        (probs,) = self._session.run(None, {self._input: batch})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(OUTPUT, probs)],
        )
