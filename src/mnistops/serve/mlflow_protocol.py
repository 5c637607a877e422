"""The MLflow scoring protocol, as ``mlflow models serve`` speaks it: ``POST /invocations``,
``GET /ping``, ``GET /health`` and ``GET /version``. A client of MLflow's scoring server
switches to this service by changing only the URL.

``/invocations`` reads ``application/json`` holding exactly one of MLflow's input fields,
as MLflow reads them for the signature :mod:`mnistops.package` registers (one unnamed
float32 ``[-1, 784]`` tensor):

- ``inputs`` or ``instances``: images ``[N, 784]``, or ``[N, 28, 28]`` (which MLflow refuses);
- ``dataframe_split``: ``{"columns": [784 names], "data": [[784 numbers], ...]}``, with
  ``index`` allowed; the columns count by position, whatever their names;
- ``dataframe_records``: ``[{784 names: number}, ...]``; each record's values in the order
  of the first record's keys (pandas lines records up by key).

A frame may also hold one column whose cells are 784 numbers each, as MLflow allows. The
answer is MLflow's ONNX flavour's: ``{"predictions": {"probabilities": [[10 numbers], ...]}}``.
``params`` is ignored, as MLflow ignores it for a model without a params schema.

Where MLflow would run the model on nonsense this service refuses, with MLflow's error body
(``error_code``, ``message``) and its own (``error``): values must be finite pixels in
[0, 1] (MLflow answers NaN for a missing value and feeds 0-255 in as it is), records must
share their columns, and ``text/csv`` and Parquet get 415 (MLflow reads them only for a
column-based signature, so this model's MLflow server refuses them too).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from mnistops import __version__
from mnistops.bundle import OUTPUT_NAME
from mnistops.features import IMAGE_PIXELS, IMAGE_SIDE
from mnistops.imaging import JSON_NUMBERS, InputError, booleans_in, exception_text, numeric_array
from mnistops.serve.http import ERROR_RESPONSES, JSON, json_response, new_request_id
from mnistops.serve.limits import read_body
from mnistops.serve.runtime import Runtime, RuntimeDep

router = APIRouter(tags=["MLflow scoring protocol"])

TENSOR_FIELDS = ("inputs", "instances")
FRAME_FIELDS = ("dataframe_split", "dataframe_records")
INPUT_FIELDS = TENSOR_FIELDS + FRAME_FIELDS
"""MLflow's input fields; a request carries exactly one."""
SPLIT_KEYS = frozenset({"columns", "data", "index"})
PREDICTIONS = "predictions"
IS_DIGIT = "is_digit"
"""Beside the probabilities: per image, False when it does not look like a digit."""
TENSOR_SHAPES = ((IMAGE_PIXELS,), (IMAGE_SIDE, IMAGE_SIDE))
"""An image of ``inputs`` or ``instances``."""
FRAME_SHAPES = ((IMAGE_PIXELS,), (1, IMAGE_PIXELS))
"""A row of a frame: 784 columns, or one column holding 784 numbers."""
CHARSET = "utf-8"
ACCEPTED = (
    f"send {JSON} with exactly one of {', '.join(INPUT_FIELDS)}: images [N, 784] or "
    "[N, 28, 28], or frames of 784 columns, of pixels in [0, 1]"
)
ERROR_CODES = {413: "RESOURCE_LIMIT_EXCEEDED"}
"""MLflow's ``error_code`` for a refusal's status; any other is ``BAD_REQUEST``."""
NOT_READY = "not ready: the service is starting or shutting down"

_IMAGES = {
    "type": "array",
    "items": {"type": "array"},
    "description": "[N, 784] or [N, 28, 28] pixels in [0, 1].",
}
_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": f"Exactly one of {', '.join(INPUT_FIELDS)}; params is ignored.",
    "properties": {
        "inputs": _IMAGES,
        "instances": _IMAGES,
        "dataframe_split": {
            "type": "object",
            "properties": {
                "columns": {"type": "array", "items": {"type": "string"}},
                "data": {"type": "array", "items": {"type": "array"}},
                "index": {"type": "array"},
            },
            "required": ["data"],
        },
        "dataframe_records": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": {"type": "number"}},
        },
        "params": {"type": "object"},
    },
}
_ANSWER_SCHEMA = {
    "type": "object",
    "properties": {
        PREDICTIONS: {
            "type": "object",
            "properties": {
                OUTPUT_NAME: {"type": "array", "items": {"type": "array"}},
                IS_DIGIT: {"type": "array", "items": {"type": "boolean"}},
            },
        }
    },
}
_DOCS: dict[str, Any] = {
    "requestBody": {"required": True, "content": {JSON: {"schema": _REQUEST_SCHEMA}}},
    "responses": {"200": {"content": {JSON: {"schema": _ANSWER_SCHEMA}}}},
}


def invocation_pixels(body: bytes, content_type: str | None, max_images: int) -> np.ndarray:
    """Pixels ``[N, 784]`` float32 in [0, 1] from an ``/invocations`` request.

    Raises:
        InputError: not JSON (415), too many images (413), or not one of the accepted
            fields holding acceptable images (400).
    """
    _check_content_type(content_type)
    payload = _loads(body)
    field = _input_field(payload)
    value = payload[field]
    booleans = booleans_in(body)
    if field in TENSOR_FIELDS:
        return _pixels(_tensor_rows(field, value), TENSOR_SHAPES, max_images, booleans)
    rows = _split_rows(value) if field == "dataframe_split" else _record_rows(value)
    return _pixels(rows, FRAME_SHAPES, max_images, booleans)


def _check_content_type(header: str | None) -> None:
    if not header:  # MLflow's server fails on a request without one; JSON is all we read
        return
    mime, *parameters = (part.strip() for part in header.split(";"))
    if mime.lower() != JSON:
        raise InputError(
            f"unsupported content type {mime!r}: {ACCEPTED} (text/csv and Parquet need a "
            "model with named columns; this one takes a tensor)",
            status=415,
        )
    for parameter in filter(None, parameters):
        key, _, value = parameter.partition("=")
        if key.strip().lower() != "charset" or value.strip().strip('"').lower() != CHARSET:
            raise InputError(
                f"unsupported content type parameter {parameter!r}: only charset={CHARSET}",
                status=415,
            )


def _loads(body: bytes) -> Any:
    if not body:
        raise InputError(f"empty body: {ACCEPTED}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({JSON_NUMBERS}): {exception_text(exc)}") from exc


def _input_field(payload: object) -> str:
    if not isinstance(payload, dict):
        raise InputError(f"the body must be a JSON object: {ACCEPTED}")
    fields = [field for field in INPUT_FIELDS if field in payload]
    if len(fields) != 1:
        got = ", ".join(fields) or f"none (keys: {', '.join(sorted(payload)[:5]) or 'none'})"
        raise InputError(f"{ACCEPTED}; got {got}")
    return fields[0]


def _tensor_rows(field: str, value: object) -> list[Any]:
    if not isinstance(value, list) or (value and isinstance(value[0], dict)):
        raise InputError(
            f"{field} must be a list of images, [N, 784] or [N, 28, 28] (the model has one "
            "unnamed input, so named inputs are not taken)"
        )
    return value


def _split_rows(value: object) -> list[Any]:
    """The rows of ``dataframe_split``; its columns count by position."""
    if not isinstance(value, dict) or "data" not in value or not SPLIT_KEYS.issuperset(value):
        raise InputError(
            'dataframe_split must be {"columns": [...], "data": [[...], ...]} '
            '("columns" and "index" optional, no other keys)'
        )
    data, columns = value["data"], value.get("columns")
    if not isinstance(data, list):
        raise InputError("dataframe_split's data must be a list of rows")
    if columns is not None:
        if not isinstance(columns, list):
            raise InputError("dataframe_split's columns must be a list of names")
        if any(not isinstance(row, list) or len(row) != len(columns) for row in data):
            raise InputError(
                f"dataframe_split names {len(columns)} columns: every row of data needs "
                f"{len(columns)} values"
            )
    return data


def _record_rows(value: object) -> list[list[Any]]:
    """The rows of ``dataframe_records``, in the column order of the first record."""
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise InputError("dataframe_records must be a list of records: [{column: value}, ...]")
    if not value:
        return []
    columns = value[0].keys()
    for index, record in enumerate(value):
        if record.keys() != columns:
            raise InputError(
                f"record {index} has other columns than record 0: every record needs the "
                f"same {len(columns)} columns"
            )
    return [[record[column] for column in columns] for record in value]


def _pixels(
    rows: list[Any], shapes: tuple[tuple[int, ...], ...], max_images: int, booleans: bool
) -> np.ndarray:
    if not rows:
        raise InputError(f"no images: {ACCEPTED}")
    if not isinstance(rows[0], list):
        raise InputError(
            f"images must have shape {_shapes(1, shapes)}, got a flat list of {len(rows)} "
            "values (send one image as a list of one)"
        )
    if len(rows) > max_images:
        raise InputError(
            f"batch of {len(rows)} images is over the limit of {max_images}", status=413
        )
    what = "images must be lists of numbers, all the same shape"
    values = numeric_array(rows, what, may_hold_booleans=booleans)
    if values.shape[1:] not in shapes:
        raise InputError(
            f"images must have shape {_shapes(len(rows), shapes)}, got {list(values.shape)}"
        )
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise InputError("pixels must be finite numbers in [0, 1] (divide 0-255 values by 255)")
    return values.reshape(len(rows), IMAGE_PIXELS).astype(np.float32)


def _shapes(images: int, shapes: tuple[tuple[int, ...], ...]) -> str:
    return " or ".join(str([images, *shape]) for shape in shapes)


def _refusal(exc: InputError) -> Response:
    """MLflow's error body (``error_code``, ``message``) with this service's ``error``.

    Answered here rather than by the service's one handler map: a client of MLflow's
    server reads ``message``.
    """
    message = str(exc)
    body = {
        "error_code": ERROR_CODES.get(exc.http_status, "BAD_REQUEST"),
        "message": message,
        "error": message,
    }
    return json_response(body, exc.http_status)


@router.post(
    "/invocations",
    responses=ERROR_RESPONSES,
    openapi_extra=_DOCS,
    summary="Recognise digits, as `mlflow models serve` does (MLflow's scoring protocol)",
)
async def invocations(request: Request) -> Response:
    # the runtime straight from app.state, as /predict does: no dependency on the hot path
    runtime: Runtime = request.app.state.runtime
    settings = runtime.settings
    try:
        body = await read_body(request, settings.max_body_bytes)
        content_type = request.headers.get("content-type")
        pixels = invocation_pixels(body, content_type, settings.max_batch_images)
    except InputError as exc:
        return _refusal(exc)
    request_id = new_request_id()
    _, (probs, is_digit) = await runtime.predict(pixels, request_id)
    answer = {OUTPUT_NAME: probs.tolist(), IS_DIGIT: is_digit.tolist()}
    return json_response({PREDICTIONS: answer}, request_id=request_id)


@router.get("/ping", responses={503: {}}, summary="Ready to score (MLflow's health check)")
@router.get("/health", responses={503: {}}, summary="The same as /ping")
async def ping(runtime: RuntimeDep) -> Response:
    if not runtime.ready:
        return json_response({"error": NOT_READY}, 503)
    return Response(b"\n", media_type=JSON)  # MLflow's body, byte for byte


@router.get("/version", summary="The server's version, as plain text (mnistops', not MLflow's)")
async def version() -> Response:
    # MLflow answers its own version as bare text labelled JSON; this is the same shape
    return Response(__version__.encode(), media_type=JSON)
