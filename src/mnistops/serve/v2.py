"""The Open Inference Protocol (KServe v2) over HTTP: health, metadata, infer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mnistops import __version__
from mnistops.errors import MnistopsError
from mnistops.features import IMAGE_PIXELS, NUM_CLASSES
from mnistops.predictor import Predictor
from mnistops.serve import schemas
from mnistops.serve.http import ERROR_RESPONSES, JSON, json_response, new_request_id
from mnistops.serve.inputs import INPUT_NAME, infer_inputs
from mnistops.serve.runtime import Runtime, RuntimeDep

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
PLATFORM = "onnxruntime_onnx"


class UnknownModelError(MnistopsError):
    """A v2 path names a model or version this server does not serve."""

    http_status = 404


@router.get("/health/live")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready", responses={503: {}})
async def ready(runtime: RuntimeDep) -> Response:
    return json_response({"ready": runtime.ready}, 200 if runtime.ready else 503)


@router.get("", response_model=schemas.ServerMetadata)
async def server_metadata() -> Response:
    return json_response({"name": "mnistops", "version": __version__, "extensions": []})


def _named_predictor(runtime: Runtime, name: str, version: str | None = None) -> Predictor:
    """The current predictor, if it is the model (and version) a path names."""
    predictor = runtime.slot.current
    if name != predictor.name:
        raise UnknownModelError(f"unknown model {name!r}: this server serves {predictor.name!r}")
    if version is not None and version != predictor.version:
        raise UnknownModelError(
            f"unknown version {version!r} of {name}: serving version {predictor.version}"
        )
    return predictor


def _metadata(predictor: Predictor) -> dict[str, Any]:
    return {
        "name": predictor.name,
        "versions": [predictor.version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, IMAGE_PIXELS]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, NUM_CLASSES]},
            {"name": "label", "datatype": "INT64", "shape": [-1]},
        ],
    }


@router.get("/models/{name}", response_model=schemas.ModelMetadata, responses=ERROR_RESPONSES)
async def model_metadata(name: str, runtime: RuntimeDep) -> Response:
    return json_response(_metadata(_named_predictor(runtime, name)))


@router.get(
    "/models/{name}/versions/{version}",
    response_model=schemas.ModelMetadata,
    responses=ERROR_RESPONSES,
)
async def version_metadata(name: str, version: str, runtime: RuntimeDep) -> Response:
    return json_response(_metadata(_named_predictor(runtime, name, version)))


@router.get("/models/{name}/ready", responses=ERROR_RESPONSES)
async def model_ready(name: str, runtime: RuntimeDep) -> Response:
    _named_predictor(runtime, name)
    return json_response({"name": name, "ready": runtime.ready}, 200 if runtime.ready else 503)


@router.get("/models/{name}/versions/{version}/ready", responses=ERROR_RESPONSES)
async def version_ready(name: str, version: str, runtime: RuntimeDep) -> Response:
    _named_predictor(runtime, name, version)
    return json_response({"name": name, "ready": runtime.ready}, 200 if runtime.ready else 503)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    # the runtime straight from app.state, as /predict does: no dependency on the hot path
    runtime: Runtime = request.app.state.runtime
    _named_predictor(runtime, name, version)
    inputs = await infer_inputs(request, runtime.settings)
    request_id = inputs.id or new_request_id()
    predictor, probs = await runtime.predict(inputs.pixels, request_id)
    count = len(probs)
    outputs = [
        {
            "name": "probabilities",
            "shape": [count, NUM_CLASSES],
            "datatype": "FP32",
            "data": probs.reshape(-1).tolist(),
        },
        {"name": "label", "shape": [count], "datatype": "INT64", "data": probs.argmax(1).tolist()},
    ]
    answer = {
        "model_name": predictor.name,
        "model_version": predictor.version,
        "id": request_id,
        "outputs": outputs,
    }
    return json_response(answer, request_id=request_id)


_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {JSON: {"schema": schemas.InferRequest.model_json_schema()}},
    }
}


@router.post(
    "/models/{name}/infer",
    response_model=schemas.InferResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def infer(name: str, request: Request) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=schemas.InferResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await _infer(request, name, version)
