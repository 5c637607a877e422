"""The Open Inference Protocol (KServe v2) over HTTP: health, metadata and infer, with
Triton's binary tensor data extension (raw tensor bytes after a JSON header)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from mnistops import __version__
from mnistops.errors import MnistopsError
from mnistops.features import IMAGE_PIXELS, IMAGE_SIDE, NUM_CLASSES
from mnistops.imaging import InputError
from mnistops.predictor import Predictor
from mnistops.serve import schemas
from mnistops.serve.http import (
    ERROR_RESPONSES,
    JSON,
    REQUEST_ID_HEADER,
    json_response,
    new_request_id,
)
from mnistops.serve.inputs import InferInputs, RequestedOutput, infer_inputs
from mnistops.serve.runtime import Runtime, RuntimeDep
from mnistops.serve.tensors import (
    BINARY_SIZE,
    DTYPES,
    HEADER_LENGTH,
    IMAGE_DATATYPE,
    INPUT_NAME,
    brief,
)

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data"]
"""The protocol extensions served (listed in the server metadata)."""
BINARY = "application/octet-stream"
PROBABILITIES, LABEL, IS_DIGIT = "probabilities", "label", "is_digit"
OUTPUTS = {
    PROBABILITIES: ("FP32", [-1, NUM_CLASSES]),
    LABEL: ("INT64", [-1]),
    IS_DIGIT: ("BOOL", [-1]),
}
"""The model's outputs: datatype and shape."""
OUTPUT_DTYPES = {**DTYPES, "BOOL": np.dtype(np.bool_)}
KNOWN_OUTPUTS = ", ".join(repr(name) for name in OUTPUTS)
ALL_OUTPUTS = {
    binary: tuple(RequestedOutput(name, binary) for name in OUTPUTS) for binary in (False, True)
}
"""What a request that names no outputs gets, by whether it asks for binary data."""
REQUEST_ID_PARAMETER = "request_id"
"""The response parameter with the id this service gave the prediction (X-Request-ID on
HTTP too): the key of the prediction log, which feedback names."""
INPUT_PARAMETERS = {
    "datatypes": ",".join([*DTYPES, IMAGE_DATATYPE]),
    "shapes": f"[-1,{IMAGE_PIXELS}] or [-1,{IMAGE_SIDE},{IMAGE_SIDE}]; BYTES: [-1] or [-1,1]",
    "values": "integer datatypes 0-255, floating-point [0,1]; "
    "BYTES: one PNG or JPEG file per element (base64 strings in JSON)",
}
INPUT_METADATA = {
    "name": INPUT_NAME,
    "datatype": "FP32",
    "shape": [-1, IMAGE_PIXELS],
    "parameters": INPUT_PARAMETERS,
}
"""The one input: the model's own type, and in ``parameters`` all that is accepted."""


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
@router.get("/", include_in_schema=False)  # the protocol's own document spells it /v2/
async def server_metadata() -> Response:
    return json_response({"name": "mnistops", "version": __version__, "extensions": EXTENSIONS})


def named_predictor(runtime: Runtime, name: str, version: str | None = None) -> Predictor:
    """The current predictor, if it is the model (and version) a path names."""
    predictor = runtime.slot.current
    if name != predictor.name:
        raise UnknownModelError(f"unknown model {name!r}: this server serves {predictor.name!r}")
    if version is not None and version != predictor.version:
        raise UnknownModelError(
            f"unknown version {version!r} of {name}: serving version {predictor.version}"
        )
    return predictor


def metadata_of(predictor: Predictor) -> dict[str, Any]:
    return {
        "name": predictor.name,
        "versions": [predictor.version],
        "platform": PLATFORM,
        "inputs": [INPUT_METADATA],
        "outputs": [{"name": n, "datatype": d, "shape": s} for n, (d, s) in OUTPUTS.items()],
    }


@router.get("/models/{name}", response_model=schemas.ModelMetadata, responses=ERROR_RESPONSES)
async def model_metadata(name: str, runtime: RuntimeDep) -> Response:
    return json_response(metadata_of(named_predictor(runtime, name)))


@router.get(
    "/models/{name}/versions/{version}",
    response_model=schemas.ModelMetadata,
    responses=ERROR_RESPONSES,
)
async def version_metadata(name: str, version: str, runtime: RuntimeDep) -> Response:
    return json_response(metadata_of(named_predictor(runtime, name, version)))


@router.get("/models/{name}/ready", responses=ERROR_RESPONSES)
async def model_ready(name: str, runtime: RuntimeDep) -> Response:
    named_predictor(runtime, name)
    return json_response({"name": name, "ready": runtime.ready}, 200 if runtime.ready else 503)


@router.get("/models/{name}/versions/{version}/ready", responses=ERROR_RESPONSES)
async def version_ready(name: str, version: str, runtime: RuntimeDep) -> Response:
    named_predictor(runtime, name, version)
    return json_response({"name": name, "ready": runtime.ready}, 200 if runtime.ready else 503)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    # the runtime straight from app.state, as /predict does: no dependency on the hot path
    runtime: Runtime = request.app.state.runtime
    named_predictor(runtime, name, version)
    inputs = await infer_inputs(request, runtime.settings)
    wanted = wanted_outputs(inputs)
    sent = inputs.id
    request_id = new_request_id()  # the log's key and X-Request-ID; the client's id is echoed
    predictor, said = await runtime.predict(inputs.pixels, request_id)
    outputs, chunks = output_tensors(wanted, *said)
    answer = {
        "model_name": predictor.name,
        "model_version": predictor.version,
        "id": request_id if sent is None else sent,
        "parameters": {REQUEST_ID_PARAMETER: request_id},  # what POST /feedback names
        "outputs": outputs,
    }
    if not chunks:
        return json_response(answer, request_id=request_id)
    return _binary_response(answer, chunks, request_id)


def _binary_response(answer: dict[str, Any], chunks: list[bytes], request_id: str) -> Response:
    """The JSON header, then the outputs' bytes; the header's length in its own header."""
    header = orjson.dumps(answer)
    headers = {HEADER_LENGTH: str(len(header)), REQUEST_ID_HEADER: request_id}
    return Response(b"".join([header, *chunks]), headers=headers, media_type=BINARY)


def wanted_outputs(inputs: InferInputs) -> tuple[RequestedOutput, ...]:
    """The outputs to answer with, in order; refuses a name the model does not have."""
    if inputs.outputs is None:
        return ALL_OUTPUTS[inputs.binary_output]
    for output in inputs.outputs:
        if output.name not in OUTPUTS:
            raise InputError(
                f"unknown output {brief(output.name)}: the outputs are {KNOWN_OUTPUTS}"
            )
    return inputs.outputs


def output_tensors(
    wanted: tuple[RequestedOutput, ...], probs: np.ndarray, is_digit: np.ndarray
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The response's outputs, and the bytes of those sent as binary data, in order."""
    described, chunks = [], []
    tensors = {PROBABILITIES: probs, LABEL: probs.argmax(axis=1), IS_DIGIT: is_digit}
    for output in wanted:
        tensor = tensors[output.name]
        datatype = OUTPUTS[output.name][0]
        entry: dict[str, Any] = {
            "name": output.name,
            "shape": [*tensor.shape],
            "datatype": datatype,
        }
        if output.binary:
            chunk = tensor.astype(OUTPUT_DTYPES[datatype], copy=False).tobytes()
            entry["parameters"] = {BINARY_SIZE: len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = tensor.reshape(-1).tolist()
        described.append(entry)
    return described, chunks


_INFER_BODY: dict[str, Any] = {
    "parameters": [
        {
            "name": HEADER_LENGTH,
            "in": "header",
            "required": False,
            "schema": {"type": "integer", "minimum": 0},
            "description": "Binary tensor data: the JSON header's length in bytes; the "
            f"input's bytes follow it ({BINARY_SIZE}). 0: the body is one raw FP32 image.",
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            JSON: {"schema": schemas.request_schema(schemas.InferRequest)},
            BINARY: {"schema": {"type": "string", "format": "binary"}},
        },
    },
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
