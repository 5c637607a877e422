"""The bare app of the peers suite: FastAPI, orjson and onnxruntime, nothing else.

What a hand-written service does for one image: parse ``{"image": [784 floats]}`` with
orjson, check the pixels as /predict does (finite, within [0, 1]), run the ONNX file
mnistops serves, answer the digit and its probabilities. No batching, no monitoring, no
limits. Run in its own environment as ``python bare_app.py MODEL.onnx PORT``: uvicorn on
127.0.0.1 with uvloop and httptools, one process, no access log (as ``mnistops serve``).
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

PIXELS = 784


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def create_app(path: str) -> FastAPI:
    model = session(path)
    input_name = model.get_inputs()[0].name
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        payload = orjson.loads(await request.body())
        values = np.asarray(payload["image"], dtype=np.float64).reshape(1, PIXELS)
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            return Response(b'{"error": "pixels must be within [0, 1]"}', status_code=400)
        (probs,) = model.run(None, {input_name: values.astype(np.float32)})
        digit = int(probs[0].argmax())
        answer = {"digit": digit, "confidence": float(probs[0, digit])}
        answer["probabilities"] = probs[0].tolist()
        return Response(orjson.dumps(answer), media_type="application/json")

    return app


def main() -> None:
    path, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(
        create_app(path),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
