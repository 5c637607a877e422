"""Request bodies to pixels: the one place where every route's input is checked.

``/predict`` takes JSON pixels, a multipart upload or a raw PNG/JPEG body; the Open
Inference Protocol takes one tensor. Both become float32 ``[N, 784]`` in ``[0, 1]``
here, and every refusal says what was wrong and what is accepted. The pydantic models
in :mod:`mnistops.serve.schemas` document the same bodies in /docs; the scales come from
there, and a unit test holds the datatypes here to the documented ones.

The checks are written on orjson and numpy rather than as pydantic validators: the
refusals need their own statuses (413 for a batch over the limit) and to name what was
sent, and pydantic alone takes twice as long over a 200-image tensor (16 ms against
7.6 ms for parsing and checking it here) before the numbers are even an array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import orjson
from fastapi import Request

from mnistops.config import Settings
from mnistops.features import IMAGE_PIXELS, IMAGE_SIDE
from mnistops.imaging import (
    ACCEPTED_IMAGE_TYPES,
    JSON_NUMBERS,
    InputError,
    image_to_pixels,
    pixels_from_values,
)
from mnistops.serve import schemas
from mnistops.serve.http import JSON
from mnistops.serve.limits import read_body

MULTIPART = "multipart/form-data"
UPLOAD_FIELD = "file"
ACCEPTED_BODIES = (
    f"{JSON}, {MULTIPART} (field '{UPLOAD_FIELD}'), {' or '.join(ACCEPTED_IMAGE_TYPES)}"
)
SCALES: tuple[str, ...] = get_args(schemas.Scale)
"""``scale`` of /predict: ``unit`` is [0, 1], ``byte`` is 0-255."""

INPUT_NAME = "pixels"
"""The one input tensor of the Open Inference Protocol."""
IMAGE_SHAPES = ([IMAGE_PIXELS], [IMAGE_SIDE, IMAGE_SIDE])
"""A tensor's shape after its first (batch) dimension."""
DATATYPE_TOP = {"UINT8": 255.0, "FP32": 1.0}
"""Accepted tensor datatypes and the largest value of each (the smallest is 0)."""
MAX_ID_CHARS = 64
"""An inference request's ``id`` is cut to this length."""


@dataclass(frozen=True)
class InferInputs:
    """A checked Open Inference Protocol request."""

    pixels: np.ndarray
    """float32 ``[N, 784]`` in ``[0, 1]``."""
    id: str | None
    """The client's request id, if it sent one."""


async def predict_pixels(request: Request, settings: Settings) -> np.ndarray:
    """Pixels ``[N, 784]`` from a /predict body: JSON, multipart upload or raw image.

    Raises:
        InputError: the body is not one of :data:`ACCEPTED_BODIES` (415), is too large
            (413) or holds no acceptable image (400).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, settings.max_body_bytes)
    if content_type in ACCEPTED_IMAGE_TYPES:
        return image_to_pixels(body, settings.max_image_pixels)
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
    if "images" in payload:
        return _batch_pixels(payload["images"], scale, max_images)
    pixels = pixels_from_values(payload["image"], scale=scale)
    if len(pixels) != 1:
        raise InputError('"image" must be 28x28 or 784 values; send several as "images"')
    return pixels


def _batch_pixels(images: object, scale: str | None, max_images: int) -> np.ndarray:
    if not isinstance(images, list) or not images:
        raise InputError('"images" must be a non-empty list of images')
    if len(images) > max_images:
        raise InputError(
            f"batch of {len(images)} images is over the limit of {max_images}", status=413
        )
    return pixels_from_values(images, scale=scale).reshape(len(images), -1)


async def _multipart_pixels(request: Request, settings: Settings) -> np.ndarray:
    try:
        form = await request.form(max_files=1, max_fields=4)
    # python-multipart and Starlette raise several unrelated types for a malformed body
    except Exception as exc:
        raise InputError(f"malformed multipart body: {exc}") from exc
    try:
        upload = form.get(UPLOAD_FIELD)
        if upload is None or isinstance(upload, str):
            raise InputError(
                f"multipart body must carry the image in a file field named '{UPLOAD_FIELD}'"
            )
        data = await upload.read()
    finally:
        await form.close()  # a refused body's uploads are spooled files too
    return image_to_pixels(data, settings.max_image_pixels)


async def infer_inputs(request: Request, settings: Settings) -> InferInputs:
    """The pixels and id of an Open Inference Protocol infer request.

    Raises:
        InputError: the body is not JSON with one acceptable ``pixels`` tensor (400),
            or is too large (413).
    """
    payload = _loads(await read_body(request, settings.max_body_bytes))
    pixels = tensor_pixels(payload, settings.max_batch_images)
    assert isinstance(payload, dict)  # tensor_pixels refuses anything else
    sent_id = payload.get("id")
    return InferInputs(pixels, str(sent_id)[:MAX_ID_CHARS] if sent_id else None)


def tensor_pixels(payload: object, max_images: int) -> np.ndarray:
    """Check an infer request's one tensor; return pixels ``[N, 784]`` float32 in [0, 1]."""
    tensor = _one_tensor(payload)
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype not in DATATYPE_TOP:
        raise InputError(f"datatype must be UINT8 (0-255) or FP32 ([0, 1]), got {datatype!r}")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) for d in shape)
        or shape[1:] not in IMAGE_SHAPES
    ):
        raise InputError(f"shape must be [N, 784] or [N, 28, 28], got {shape!r}")
    if not 1 <= shape[0] <= max_images:
        raise InputError(f"shape[0] (images) must be 1..{max_images}, got {shape[0]}")
    values = _tensor_values(tensor.get("data"), shape)
    return _in_range(values, datatype).reshape(shape[0], IMAGE_PIXELS)


def _one_tensor(payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InputError('send {"inputs": [{"name", "shape", "datatype", "data"}]}')
    inputs = payload["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InputError(f"exactly one input tensor is accepted ({INPUT_NAME!r})")
    tensor: dict[str, Any] = inputs[0]
    return tensor


def _tensor_values(data: object, shape: list[int]) -> np.ndarray:
    images = shape[0]
    try:
        values = np.asarray(data, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError(f"data must be a flat or nested list of numbers ({exc})") from exc
    if values.size != images * IMAGE_PIXELS:
        raise InputError(
            f"data has {values.size} values; shape {shape} needs {images * IMAGE_PIXELS}"
        )
    return values


def _in_range(values: np.ndarray, datatype: str) -> np.ndarray:
    top = DATATYPE_TOP[datatype]
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > top:
        raise InputError(f"{datatype} values must be finite and within [0, {top:g}]")
    if datatype == "UINT8" and not np.array_equal(values, np.round(values)):
        raise InputError("UINT8 values must be integers 0-255")
    return (values / top).astype(np.float32)


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({JSON_NUMBERS}): {exc}") from exc
