"""Request bodies to pixels: the one place where every route's input is checked.

``/predict`` takes JSON pixels, a multipart upload or a raw PNG/JPEG body; the Open
Inference Protocol takes one tensor, in JSON or as raw bytes after a JSON header (the
binary tensor data extension), whose checks are in :mod:`mnistops.serve.tensors`. Both
become float32 ``[N, 784]`` in ``[0, 1]``, and every refusal says what was wrong and what
is accepted. The pydantic models in :mod:`mnistops.serve.schemas` document the same
bodies in /docs; the scales come from there, and a unit test holds the datatypes here to
the documented ones.

The checks are written on orjson and numpy rather than as pydantic validators: the
refusals need their own statuses (413 for a batch over the limit) and to name what was
sent, and pydantic alone takes twice as long over a 200-image tensor (16 ms against
7.6 ms for parsing and checking it here) before the numbers are even an array.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, get_args

import anyio.to_thread
import numpy as np
import orjson
from fastapi import Request

from mnistops.config import Settings
from mnistops.imaging import (
    ACCEPTED_IMAGE_TYPES,
    JSON_NUMBERS,
    InputError,
    booleans_in,
    exception_text,
    open_image,
    opened_to_pixels,
    pixels_from_values,
)
from mnistops.serve import schemas
from mnistops.serve.http import JSON
from mnistops.serve.limits import read_body

# DATATYPE_TOP and tensor_pixels are re-exported: every route's input is checked from here
from mnistops.serve.tensors import DATATYPE_TOP as DATATYPE_TOP
from mnistops.serve.tensors import (
    HEADER_LENGTH,
    IMAGE_DATATYPE,
    brief,
    parameters_of,
    raw_pixels,
)
from mnistops.serve.tensors import tensor_pixels as tensor_pixels

MULTIPART = "multipart/form-data"
UPLOAD_FIELD = "file"
ACCEPTED_BODIES = (
    f"{JSON}, {MULTIPART} (field '{UPLOAD_FIELD}'), {' or '.join(ACCEPTED_IMAGE_TYPES)}"
)
SCALES: tuple[str, ...] = get_args(schemas.Scale)
"""``scale`` of /predict: ``unit`` is [0, 1], ``byte`` is 0-255."""
MAX_HEADER_DIGITS = 18
"""A header length with more digits is over any body limit (and int() has a digit limit)."""
INLINE_IMAGE_PIXELS = 65_536
"""An upload whose header says more pixels than this (256x256) is decoded on a worker
thread, so that the event loop goes on serving other requests meanwhile; a smaller one
is decoded inline, where it takes less time than the hop to a thread and back."""


@dataclass(frozen=True)
class RequestedOutput:
    """An output a v2 request asks for, and whether as binary data."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferInputs:
    """A checked Open Inference Protocol request."""

    pixels: np.ndarray
    """float32 ``[N, 784]`` in ``[0, 1]``."""
    id: str | None
    """The client's request id exactly as sent, if it sent one."""
    outputs: tuple[RequestedOutput, ...] | None = None
    """The outputs asked for, in order; None for all of them."""
    binary_output: bool = False
    """Whether outputs not asked for by name come as binary data."""


async def predict_pixels(request: Request, settings: Settings) -> np.ndarray:
    """Pixels ``[N, 784]`` from a /predict body: JSON, multipart upload or raw image.

    Raises:
        InputError: the body is not one of :data:`ACCEPTED_BODIES` (415), is too large
            (413) or holds no acceptable image (400).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, settings.max_body_bytes)
    if content_type in ACCEPTED_IMAGE_TYPES:
        return await image_pixels(body, settings.max_image_pixels)
    if content_type == MULTIPART:
        return await _multipart_pixels(request, settings)
    if content_type in (JSON, ""):
        return json_pixels(body, settings.max_batch_images)
    raise InputError(
        f"unsupported content type {content_type!r}: send {ACCEPTED_BODIES}", status=415
    )


def json_pixels(body: bytes, max_images: int) -> np.ndarray:
    """Pixels ``[N, 784]`` from ``{"image": ...}`` or ``{"images": [...]}`` (with ``scale``)."""
    if not body:
        raise InputError('empty body: send JSON {"image": [...]} or {"images": [[...], ...]}')
    payload = _loads(body)
    if not isinstance(payload, dict) or ("image" in payload) == ("images" in payload):
        raise InputError('send a JSON object with exactly one of "image" or "images"')
    scale = payload.get("scale")
    if scale is not None and scale not in SCALES:
        raise InputError('"scale" must be "unit" ([0, 1]) or "byte" (0-255)')
    booleans = booleans_in(body)
    if "images" in payload:
        return _batch_pixels(payload["images"], scale, max_images, booleans)
    pixels = pixels_from_values(payload["image"], scale=scale, may_hold_booleans=booleans)
    if len(pixels) != 1:
        raise InputError('"image" must be 28x28 or 784 values; send several as "images"')
    return pixels


def _batch_pixels(images: object, scale: str | None, max_images: int, booleans: bool) -> np.ndarray:
    if not isinstance(images, list) or not images:
        raise InputError('"images" must be a non-empty list of images')
    if len(images) > max_images:
        raise InputError(
            f"batch of {len(images)} images is over the limit of {max_images}", status=413
        )
    pixels = pixels_from_values(images, scale=scale, may_hold_booleans=booleans)
    return pixels.reshape(len(images), -1)


async def image_pixels(data: bytes, max_pixels: int) -> np.ndarray:
    """One uploaded PNG/JPEG as ``[1, 784]``, decoded off the event loop when large.

    Raises:
        InputError: not a readable image (400), or over ``max_pixels`` (413).
    """
    image = open_image(data, max_pixels)  # the header only: cheap, and checks the cap
    width, height = image.size
    if width * height <= INLINE_IMAGE_PIXELS:
        return opened_to_pixels(image)
    # anyio's threads, not the default executor, which the micro-batcher predicts on
    return await anyio.to_thread.run_sync(opened_to_pixels, image)


async def _multipart_pixels(request: Request, settings: Settings) -> np.ndarray:
    try:
        form = await request.form(max_files=1, max_fields=4)
    # python-multipart and Starlette raise several unrelated types for a malformed body
    except Exception as exc:
        raise InputError(f"malformed multipart body: {exception_text(exc)}") from exc
    try:
        upload = form.get(UPLOAD_FIELD)
        if upload is None or isinstance(upload, str):
            raise InputError(
                f"multipart body must carry the image in a file field named '{UPLOAD_FIELD}'"
            )
        data = await upload.read()
    finally:
        await form.close()  # a refused body's uploads are spooled files too
    return await image_pixels(data, settings.max_image_pixels)


async def infer_inputs(request: Request, settings: Settings) -> InferInputs:
    """The checked request of an Open Inference Protocol infer call.

    The body is JSON, or a JSON header of ``Inference-Header-Content-Length`` bytes
    followed by the input's raw bytes, or (that header being 0) one raw FP32 image.

    Raises:
        InputError: a compressed body (415), a body over the limit (413), or anything
            but one acceptable ``pixels`` tensor (400).
    """
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding != "identity":
        raise InputError(f"Content-Encoding {encoding!r}: send the body uncompressed", 415)
    body = await read_body(request, settings.max_body_bytes)
    header = request.headers.get(HEADER_LENGTH)
    if header is None:
        payload = _loads(body)
        return await checked_infer_request(
            payload, b"", settings, may_hold_booleans=booleans_in(body)
        )
    length = _header_length(header, len(body))
    if length == 0:
        return InferInputs(raw_pixels(body), None, binary_output=True)
    view = memoryview(body)
    booleans = booleans_in(body, length)
    return await checked_infer_request(
        _loads(view[:length]), view[length:], settings, may_hold_booleans=booleans
    )


async def checked_infer_request(
    payload: object,
    binary: bytes | memoryview,
    settings: Settings,
    *,
    may_hold_booleans: bool = True,
) -> InferInputs:
    """:func:`infer_request` for HTTP and gRPC: on a worker thread when the tensor holds
    encoded images (decoding up to 256 of them would hold up the event loop), inline for
    numbers (parsed in milliseconds, less than a thread hop costs at the p50)."""
    check = partial(infer_request, payload, binary, settings, may_hold_booleans=may_hold_booleans)
    if _encoded_images(payload):
        return await anyio.to_thread.run_sync(check)
    return check()


def _encoded_images(payload: object) -> bool:
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    return isinstance(inputs, list) and any(
        isinstance(tensor, dict) and tensor.get("datatype") == IMAGE_DATATYPE for tensor in inputs
    )


def infer_request(
    payload: object,
    binary: bytes | memoryview,
    settings: Settings,
    *,
    may_hold_booleans: bool = True,
) -> InferInputs:
    """Check a parsed infer request (and the bytes after its JSON header, if any).

    ``may_hold_booleans`` is False when the JSON text has no ``true`` or ``false``.
    """
    pixels = tensor_pixels(
        payload,
        settings.max_batch_images,
        binary,
        settings.max_image_pixels,
        may_hold_booleans=may_hold_booleans,
    )
    assert isinstance(payload, dict)  # tensor_pixels refuses anything else
    sent_id = payload.get("id")
    if sent_id is not None and not isinstance(sent_id, str):
        raise InputError(f'"id" must be a string, got {brief(sent_id)}')
    binary_output = _flag(parameters_of(payload, "request"), "binary_data_output", False)
    outputs = _requested(payload.get("outputs"), binary_output)
    return InferInputs(pixels, sent_id, outputs, binary_output)


def _header_length(value: str, body_size: int) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= MAX_HEADER_DIGITS):
        raise InputError(f"{HEADER_LENGTH} must be a byte count, got {brief(value)}")
    length = int(value)
    if length > body_size:
        raise InputError(f"{HEADER_LENGTH} is {length} but the body has {body_size} bytes")
    return length


def _requested(outputs: object, binary_output: bool) -> tuple[RequestedOutput, ...] | None:
    """The outputs a request names (None: all), binary where asked or by default."""
    if outputs is None or outputs == []:
        return None
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise InputError('"outputs" must be a list of {"name": ..., "parameters": {...}}')
    requested = []
    for output in outputs:
        parameters = parameters_of(output, f"output {brief(output['name'])}")
        if "classification" in parameters or "shared_memory_region" in parameters:
            raise InputError("the classification and shared memory extensions are not supported")
        binary = _flag(parameters, "binary_data", binary_output)
        requested.append(RequestedOutput(output["name"], binary))
    return tuple(requested)


def _flag(parameters: dict[str, Any], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise InputError(f"parameter {name!r} must be true or false, got {brief(value)}")
    return value


def _loads(body: bytes | memoryview) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({JSON_NUMBERS}): {exception_text(exc)}") from exc
