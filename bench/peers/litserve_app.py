"""LitServe's app for the peers suite: a LitAPI over onnxruntime and the ONNX file mnistops
serves, at ``/predict`` with the same body as mnistops' (``{"image": [784 floats]}``).

Run in its own environment as ``python litserve_app.py MODEL.onnx PORT MAX_BATCH
BATCH_TIMEOUT_S [--fast-queue]``: one API server process and one inference worker on the
CPU; with MAX_BATCH above 1, LitServe gathers up to that many requests, waiting at most
BATCH_TIMEOUT_S seconds, into one ``predict``. ``--fast-queue`` passes requests between the
processes over ZeroMQ instead of multiprocessing queues.
"""

import sys
from typing import Any

import litserve as ls
import numpy as np
import onnxruntime as ort

PIXELS = 784


class OnnxAPI(ls.LitAPI):  # type: ignore[misc]  # LitServe is not installed where mypy runs
    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(**options)
        self.path = path

    def setup(self, device: str) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    # Unannotated, as LitServe reads the parameter's annotation: none means the body is
    # read as JSON and handed over as it is (an annotation would have FastAPI validate it).
    def decode_request(self, request, **kwargs: Any) -> np.ndarray:  # type: ignore[no-untyped-def]
        values = np.asarray(request["image"], dtype=np.float64).reshape(PIXELS)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError("pixels must be within [0, 1]")
        return values.astype(np.float32)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        (probs,) = self.session.run(None, {self.input_name: x.reshape(-1, PIXELS)})
        return np.asarray(probs)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    # Unannotated return for the same reason: FastAPI would validate the answer against it.
    def encode_response(self, output: np.ndarray, **kwargs: Any):  # type: ignore[no-untyped-def]
        probs = output.reshape(-1)
        digit = int(probs.argmax())
        return {"digit": digit, "confidence": float(probs[digit]), "probabilities": probs.tolist()}


def main() -> None:
    path, port, max_batch, timeout = sys.argv[1:5]
    api = OnnxAPI(path, max_batch_size=int(max_batch), batch_timeout=float(timeout))
    server = ls.LitServer(
        api,
        accelerator="cpu",
        devices=1,
        workers_per_device=1,
        fast_queue="--fast-queue" in sys.argv,
    )
    server.run(
        host="127.0.0.1",
        port=int(port),
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
