"""Open Inference Protocol tensors to pixels: datatypes, shapes, binary tensor data and
encoded images, each checked with a refusal that says what is accepted.

An input tensor becomes float32 ``[N, 784]`` in ``[0, 1]``, as /predict's bodies do
(:mod:`mnistops.serve.inputs` reads the body and calls :func:`tensor_pixels`).
Integer datatypes carry pixels 0-255 and floating-point ones [0, 1]: /predict's two
scales, told here by the datatype instead of guessed from the values.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from mnistops.config import Settings
from mnistops.features import IMAGE_PIXELS, IMAGE_SIDE
from mnistops.imaging import (
    InputError,
    exception_text,
    numeric_array,
    open_image,
    opened_to_pixels,
)

INPUT_NAME = "pixels"
"""The one input tensor of the Open Inference Protocol."""
IMAGE_SHAPES = ([IMAGE_PIXELS], [IMAGE_SIDE, IMAGE_SIDE])
"""A numeric tensor's shape after its first (batch) dimension."""
IMAGE_DATATYPE = "BYTES"
"""A tensor of encoded PNG/JPEG files, one image per element."""
ENCODED_SHAPES: tuple[list[int], ...] = ([], [1])
"""An image tensor's shape after its first (batch) dimension."""
DTYPES = {
    name: np.dtype(code)
    for name, code in {
        "FP64": "<f8", "FP32": "<f4", "FP16": "<f2",
        "UINT64": "<u8", "UINT32": "<u4", "UINT16": "<u2", "UINT8": "u1",
        "INT64": "<i8", "INT32": "<i4", "INT16": "<i2", "INT8": "i1",
    }.items()
}  # fmt: skip
"""Numeric datatypes as numpy types, little-endian as the binary extension sends them."""
DATATYPE_TOP = {name: 1.0 if dtype.kind == "f" else 255.0 for name, dtype in DTYPES.items()}
"""Pixel value of full ink by datatype: floats are [0, 1], integers 0-255 (the smallest is 0).
/predict reads the same two scales; here the datatype says which one was sent."""
ACCEPTED_DATATYPES = f"{', '.join(DTYPES)} (integers 0-255, floats [0, 1]) or BYTES (PNG/JPEG)"
HEADER_LENGTH = "Inference-Header-Content-Length"
"""Binary tensor data extension: the JSON header's length; the tensors' bytes follow it."""
BINARY_SIZE = "binary_data_size"
RAW_DATATYPE = "FP32"
"""A raw binary request (no JSON header) is one image of the model's own input type."""
BRIEF_CHARS = 80
"""What a refusal quotes of a value the client sent."""


def tensor_pixels(
    payload: object,
    max_images: int,
    binary: bytes | memoryview = b"",
    max_image_pixels: int = Settings.model_fields["max_image_pixels"].default,
    *,
    may_hold_booleans: bool = True,
) -> np.ndarray:
    """Check an infer request's one tensor; return pixels ``[N, 784]`` float32 in [0, 1].

    Args:
        payload: the request's JSON object.
        max_images: the most images a request may carry.
        binary: the bytes after the JSON header (binary tensor data extension).
        max_image_pixels: the most pixels the images of a BYTES tensor may decode to,
            in all (see :func:`_decoded`).
        may_hold_booleans: False when the JSON text has no ``true`` or ``false``.
    """
    tensor = _one_tensor(payload)
    datatype = tensor.get("datatype")
    if datatype not in DTYPES and datatype != IMAGE_DATATYPE:
        raise InputError(f"datatype must be {ACCEPTED_DATATYPES}, got {brief(datatype)}")
    images = _images(tensor.get("shape"), datatype, max_images)
    raw = _tensor_bytes(tensor, binary)
    if datatype == IMAGE_DATATYPE:
        files = _split_files(raw, images) if raw is not None else _base64_files(tensor, images)
        return _decoded(files, max_image_pixels)
    count = images * IMAGE_PIXELS
    if raw is None:
        values = _json_values(tensor.get("data"), tensor["shape"], may_hold_booleans)
    else:
        values = _binary_values(raw, DTYPES[datatype], count)
    return _to_unit(values, datatype).reshape(images, IMAGE_PIXELS)


def _one_tensor(payload: object) -> dict[str, Any]:
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InputError('send {"inputs": [{"name", "shape", "datatype", "data"}]}')
    inputs = payload["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InputError(f"exactly one input tensor is accepted ({INPUT_NAME!r})")
    tensor: dict[str, Any] = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise InputError(f"unknown input {brief(tensor.get('name'))}: send {INPUT_NAME!r}")
    return tensor


def _images(shape: object, datatype: str, max_images: int) -> int:
    """The number of images a tensor's shape says (the first dimension)."""
    if not isinstance(shape, list) or not shape or any(type(d) is not int or d < 0 for d in shape):
        raise InputError(f"shape must be a list of non-negative integers, got {brief(shape)}")
    if datatype == IMAGE_DATATYPE and shape[1:] not in ENCODED_SHAPES:
        raise InputError(f"shape of BYTES images must be [N] or [N, 1], got {brief(shape)}")
    if datatype != IMAGE_DATATYPE and shape[1:] not in IMAGE_SHAPES:
        raise InputError(f"shape must be [N, 784] or [N, 28, 28], got {brief(shape)}")
    if not 1 <= shape[0] <= max_images:
        raise InputError(f"shape[0] (images) must be 1..{max_images}, got {shape[0]}")
    return int(shape[0])


def _tensor_bytes(tensor: dict[str, Any], binary: bytes | memoryview) -> memoryview | None:
    """The tensor's raw bytes when it is sent as binary data; None when it is JSON."""
    parameters = parameters_of(tensor, f"input {INPUT_NAME!r}")
    size = parameters.get(BINARY_SIZE)
    if "shared_memory_region" in parameters:
        raise InputError(f"shared memory is not supported: send data or {BINARY_SIZE}")
    if size is None:
        if len(binary):
            raise InputError(f"{len(binary)} bytes follow the JSON header; no {BINARY_SIZE}")
        return None
    if type(size) is not int or size != len(binary):
        raise InputError(
            f"{BINARY_SIZE} of {INPUT_NAME!r} is {brief(size)} but {len(binary)} bytes "
            f"follow the JSON header (its length is the {HEADER_LENGTH} header)"
        )
    if tensor.get("data") is not None:
        raise InputError(f"send {INPUT_NAME!r} in data or as binary data, not both")
    return memoryview(binary)


def _json_values(data: object, shape: list[int], may_hold_booleans: bool) -> np.ndarray:
    if data is None:
        raise InputError(f"{INPUT_NAME!r} needs data, or {BINARY_SIZE} and binary data")
    count = shape[0] * IMAGE_PIXELS
    values = numeric_array(
        data, "data must be a flat or nested list of numbers", may_hold_booleans=may_hold_booleans
    )
    if values.size != count:
        raise InputError(f"data has {values.size} values; shape {shape} needs {count}")
    return values.reshape(-1)


def _binary_values(raw: memoryview, dtype: np.dtype[Any], count: int) -> np.ndarray:
    if len(raw) != count * dtype.itemsize:
        raise InputError(
            f"{count} values of {dtype.itemsize} bytes are {count * dtype.itemsize} bytes; "
            f"{BINARY_SIZE} is {len(raw)}"
        )
    return np.frombuffer(raw, dtype)


def _to_unit(values: np.ndarray, datatype: str) -> np.ndarray:
    """Values of ``datatype`` (floats in [0, 1] or integers 0-255) as float32 [0, 1]."""
    top = DATATYPE_TOP[datatype]
    floats = values.dtype.kind == "f"
    if (floats and not np.isfinite(values).all()) or values.min() < 0 or values.max() > top:
        raise InputError(f"{datatype} values must be finite and within [0, {top:g}]")
    if top != 1.0 and floats and not np.array_equal(values, np.round(values)):
        raise InputError(f"{datatype} values must be integers 0-255")
    # float64 division first, as /predict does, so both routes see the same float32 pixels
    return (values / top).astype(np.float32) if top != 1.0 else values.astype(np.float32)


def _split_files(raw: memoryview, count: int) -> list[bytes]:
    """BYTES elements of the binary extension: a 4-byte little-endian length, then the bytes."""
    files, offset = [], 0
    for index in range(count):
        size = int.from_bytes(raw[offset : offset + 4], "little") if offset + 4 <= len(raw) else -1
        if size < 0 or offset + 4 + size > len(raw):
            raise InputError(f"BYTES element {index} is cut short: {BINARY_SIZE} is {len(raw)}")
        files.append(bytes(raw[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    if offset != len(raw):
        raise InputError(f"{len(raw) - offset} bytes follow the {count} BYTES elements")
    return files


def _base64_files(tensor: dict[str, Any], count: int) -> list[bytes]:
    data = tensor.get("data")
    if isinstance(data, list):
        data = [d[0] if isinstance(d, list) and len(d) == 1 else d for d in data]
    if (
        not isinstance(data, list)
        or len(data) != count
        or not all(isinstance(d, str) for d in data)
    ):
        raise InputError(f"BYTES data in JSON must be {count} base64 strings of PNG/JPEG files")
    try:
        return [base64.b64decode(text, validate=True) for text in data]
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"BYTES data in JSON must be base64 ({exception_text(exc)})") from exc


def _decoded(files: list[bytes], max_image_pixels: int) -> np.ndarray:
    """One row of pixels per PNG/JPEG file, through /predict's image pipeline.

    The images of one request share one upload's pixel cap, counted as they will decode
    (a JPEG at its reduced scale), and every header is read before anything is decoded.
    A request thus costs at most what one /predict upload may: each image's own cap
    would let 256 small files that decode to 4M pixels each cost 256 uploads' time.
    Images of unequal size share it as they need (one photo and 200 small crops fit).
    """
    opened, total = [], 0
    for index, data in enumerate(files):
        with _numbered(index):
            image = open_image(data, max_image_pixels)
        width, height = image.size
        total += width * height
        if total > max_image_pixels:
            raise InputError(
                f"images 0-{index} of {len(files)} decode to {total} pixels; the images of "
                f"one request may decode to {max_image_pixels} in all, as one upload may "
                "(send fewer or smaller images per request)",
                status=413,
            )
        opened.append(image)
    rows = []
    for index, image in enumerate(opened):
        with _numbered(index):
            rows.append(opened_to_pixels(image))
    return np.concatenate(rows)


@contextmanager
def _numbered(index: int) -> Iterator[None]:
    """An image's refusal, saying which image of the tensor it is."""
    try:
        yield
    except InputError as exc:
        raise InputError(f"image {index}: {exc}", exc.http_status) from exc


def raw_pixels(body: bytes) -> np.ndarray:
    """A raw binary request: the body is one FP32 image, no JSON header."""
    size = IMAGE_PIXELS * DTYPES[RAW_DATATYPE].itemsize
    if len(body) != size:
        raise InputError(
            f"a raw binary request ({HEADER_LENGTH}: 0) is one {RAW_DATATYPE} image of "
            f"{size} bytes, got {len(body)}; send a JSON header for anything else"
        )
    return _to_unit(np.frombuffer(body, DTYPES[RAW_DATATYPE]), RAW_DATATYPE).reshape(1, -1)


def parameters_of(owner: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``parameters`` object of a request, input or output ({} when absent)."""
    parameters = owner.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InputError(f'"parameters" of the {where} must be an object, got {brief(parameters)}')
    return parameters


def brief(value: object) -> str:
    """A value the client sent, quoted short enough for a refusal."""
    text = repr(value)
    return text if len(text) <= BRIEF_CHARS else text[: BRIEF_CHARS - 3] + "..."
