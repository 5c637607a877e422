"""The Open Inference Protocol (KServe v2) over HTTP: health, metadata, infer."""

from __future__ import annotations

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from mnistops import __version__
from mnistops.features import IMAGE_PIXELS, IMAGE_SIDE, NUM_CLASSES
from mnistops.imaging import JSON_NUMBERS, InputError
from mnistops.serve import schemas
from mnistops.serve.app import ERROR_RESPONSES, Runtime, RuntimeDep, json_response, new_request_id
from mnistops.serve.limits import read_body

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
INPUT_NAME = "pixels"
SHAPES = ([-1, IMAGE_PIXELS], [-1, IMAGE_SIDE, IMAGE_SIDE])
DATATYPES = {"UINT8": 255.0, "FP32": 1.0}


@router.get("/health/live")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready", responses={503: {}})
async def ready(runtime: RuntimeDep) -> Response:
    return json_response({"ready": runtime.ready}, 200 if runtime.ready else 503)


@router.get("", response_model=schemas.ServerMetadata)
async def server_metadata() -> Response:
    return json_response({"name": "mnistops", "version": __version__, "extensions": []})


def _check(runtime: Runtime, name: str, version: str | None = None) -> None:
    served = runtime.manager.current
    if name != served.bundle.name:
        raise HTTPException(
            404, f"unknown model {name!r}: this server serves {served.bundle.name!r}"
        )
    if version is not None and version != served.version:
        raise HTTPException(
            404, f"unknown version {version!r} of {name}: serving version {served.version}"
        )


def _metadata(runtime: Runtime) -> dict[str, object]:
    served = runtime.manager.current
    return {
        "name": served.bundle.name,
        "versions": [served.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": SHAPES[0]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, NUM_CLASSES]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
    }


@router.get("/models/{name}", response_model=schemas.ModelMetadata, responses=ERROR_RESPONSES)
async def model_metadata(name: str, runtime: RuntimeDep) -> Response:
    _check(runtime, name)
    return json_response(_metadata(runtime))


@router.get(
    "/models/{name}/versions/{version}",
    response_model=schemas.ModelMetadata,
    responses=ERROR_RESPONSES,
)
async def version_metadata(name: str, version: str, runtime: RuntimeDep) -> Response:
    _check(runtime, name, version)
    return json_response(_metadata(runtime))


@router.get("/models/{name}/ready", responses=ERROR_RESPONSES)
async def model_ready(name: str, runtime: RuntimeDep) -> Response:
    _check(runtime, name)
    return json_response({"name": name, "ready": runtime.ready}, 200 if runtime.ready else 503)


@router.get("/models/{name}/versions/{version}/ready", responses=ERROR_RESPONSES)
async def version_ready(name: str, version: str, runtime: RuntimeDep) -> Response:
    _check(runtime, name, version)
    return json_response({"name": name, "ready": runtime.ready}, 200 if runtime.ready else 503)


def _tensor(payload: object, max_images: int) -> np.ndarray:
    """Validate an infer request body; return pixels ``[N, 784]`` float32 in [0, 1]."""
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InputError('send {"inputs": [{"name", "shape", "datatype", "data"}]}')
    if len(payload["inputs"]) != 1 or not isinstance(payload["inputs"][0], dict):
        raise InputError(f"exactly one input tensor is accepted ({INPUT_NAME!r})")
    tensor = payload["inputs"][0]
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype not in DATATYPES:
        raise InputError(f"datatype must be UINT8 (0-255) or FP32 ([0, 1]), got {datatype!r}")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) for d in shape)
        or len(shape) not in (2, 3)
        or shape[1:] not in ([784], [28, 28])
    ):
        raise InputError(f"shape must be [N, 784] or [N, 28, 28], got {shape!r}")
    if not 1 <= shape[0] <= max_images:
        raise InputError(f"shape[0] (images) must be 1..{max_images}, got {shape[0]}")
    try:
        data = np.asarray(tensor.get("data"), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"data must be a flat or nested list of numbers ({exc})") from exc
    if data.size != shape[0] * IMAGE_PIXELS:
        raise InputError(
            f"data has {data.size} values; shape {shape} needs {shape[0] * IMAGE_PIXELS}"
        )
    top = DATATYPES[datatype]
    if not np.isfinite(data).all() or data.min() < 0 or data.max() > top:
        raise InputError(f"{datatype} values must be finite and within [0, {top:g}]")
    if datatype == "UINT8" and not np.array_equal(data, np.round(data)):
        raise InputError("UINT8 values must be integers 0-255")
    return (data / top).astype(np.float32).reshape(shape[0], IMAGE_PIXELS)


async def _infer(request: Request, runtime: Runtime, name: str, version: str | None) -> Response:
    _check(runtime, name, version)
    body = await read_body(request, runtime.settings.max_body_bytes)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({JSON_NUMBERS}): {exc}") from exc
    pixels = _tensor(payload, runtime.settings.max_batch_images)
    request_id = str(payload.get("id") or new_request_id())[:64]
    served, probs = await runtime.predict(pixels, request_id)
    count = len(probs)
    return json_response(
        {
            "model_name": served.bundle.name,
            "model_version": served.version,
            "id": request_id,
            "outputs": [
                {
                    "name": "probabilities",
                    "shape": [count, NUM_CLASSES],
                    "datatype": "FP32",
                    "data": probs.reshape(-1).tolist(),
                },
                {
                    "name": "label",
                    "shape": [count],
                    "datatype": "INT64",
                    "data": probs.argmax(axis=1).tolist(),
                },
            ],
        },
        request_id=request_id,
    )


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": schemas.InferRequest.model_json_schema()}},
    }
}


@router.post(
    "/models/{name}/infer",
    response_model=schemas.InferResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def infer(name: str, request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return await _infer(request, runtime, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=schemas.InferResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def infer_version(name: str, version: str, request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return await _infer(request, runtime, name, version)
