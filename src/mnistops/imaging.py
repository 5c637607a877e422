"""Decode uploaded images and normalise them the MNIST way; validate pixel arrays.

MNIST digits are white ink on black, the ink's bounding box scaled to fit 20x20
(keeping aspect) and placed in a 28x28 field so that its centre of mass is at the
centre. :func:`normalise_image` does the same to any photo or drawing.
"""

from __future__ import annotations

import io
import re
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from mnistops.errors import MnistopsError
from mnistops.features import IMAGE_PIXELS, IMAGE_SIDE

if TYPE_CHECKING:
    from PIL import Image

DIGIT_BOX = 20
"""MNIST fits each digit's ink into a 20x20 box."""
INK_CUTOFF = 0.2
"""After inversion and stretching, pixels above this fraction of full ink count as ink."""
BACKGROUND_PERCENTILE = 25
"""Contrast is stretched from this percentile of the picture (paper: ink covers less than
three quarters of any picture of a digit) up to its darkest ink ..."""
PAPER_GRAIN = 3.0
"""... plus this many times the paper's grain (the spread of its lower pixels), so that
noise on photographed paper never counts as ink."""
BACKGROUND_MIN_SIDE = 48
BACKGROUND_SAMPLES = 4096
"""Pixels, at most, that the lighting's plane is fitted to."""
BACKGROUND_EVEN = 0.03
"""A background whose shade varies less than this across the picture is even."""
ACCEPTED_IMAGE_TYPES = ("image/png", "image/jpeg")
JSON_NUMBERS = "numbers must be finite; JSON has no NaN or Infinity"
NOT_NUMBERS = "strings, booleans and null are not numbers"
"""Why a pixel array holding them is refused (numpy would read "1" and true as 1.0)."""
JSON_BOOLEANS = (b"true", b"false")
"""Without either in its text, a JSON body holds no booleans: its numbers need no walk."""
LETTER_LOOKS = 64
"""Occurrences of ``t`` (or ``f``) :func:`booleans_in` looks at before it gives up."""
NUMBER_KINDS = "iuf"
"""numpy dtype kinds of pixel values: integers and floats (not bool, str or object)."""
WORKING_SIDE = 512
"""Longest side an image is decoded to: JPEG's decoder reduces by 1/2..1/8 towards it
and a block mean does the rest. A digit needs 28x28, and the cost of normalising grows
with the pixels; 512 keeps a thin pencil stroke in a photo several pixels wide."""
MODE_TOPS = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0, "F": 1.0}
"""Full scale of the modes that ``convert("L")`` would clip to 0-255 instead of scaling:
16-bit grey PNGs (``I`` holds them too; PNG has no deeper grey), and floats as [0, 1]."""
PILLOW_FAILURES = (OSError, SyntaxError, ValueError, EOFError)
"""What Pillow raises for a file that is cut short or corrupt."""
INTERNAL_REPR = re.compile(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>")
"""A Python object's default repr (``<_io.BytesIO object at 0x7f...>``): nothing a
client can act on, and an address, so refusals leave it out."""
SHORT_CHARS = 120
"""What a refusal quotes of an exception's message."""
_OPEN_LOCK = threading.Lock()
"""catch_warnings changes process-wide state: images are opened (headers only, quick)
one at a time, as they are from worker threads too."""


class InputError(MnistopsError):
    """A client sent something that is not an image or pixel array we accept."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.http_status = status


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Read a PNG/JPEG file's header and check its size; nothing is decoded yet.

    A JPEG is set to decode at a reduced scale (1/2 to 1/8, done by the decoder itself)
    when it is larger than :data:`WORKING_SIDE`, so the pixel cap applies to the size it
    will decode to: a phone photo fits, while a PNG is decoded whole and counts whole.

    Raises:
        InputError: empty, corrupt or not PNG/JPEG (400), or over ``max_pixels``
            pixels as it would decode (413, a decompression-bomb guard).
    """
    from PIL import Image

    if not data:
        raise InputError("empty image: send PNG or JPEG bytes")
    with _image_errors(), _OPEN_LOCK, warnings.catch_warnings():
        # the cap below, on the size as decoded, is this guard's; Pillow's own warning,
        # on the size before a JPEG's reduction, would refuse a photo that fits
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
    stored = image.size
    if image.format == "JPEG":
        image.draft("L", (WORKING_SIDE, WORKING_SIDE))
    width, height = image.size
    if width * height > max_pixels:
        reduced = "" if image.size == stored else f" (reduced from {stored[0]}x{stored[1]})"
        raise InputError(
            f"image is {width}x{height} = {width * height} pixels{reduced}; "
            f"at most {max_pixels} are accepted",
            status=413,
        )
    return image


def decode_opened(image: Image.Image) -> np.ndarray:
    """Decode an image from :func:`open_image`: float32 grey in [0, 1], upright as its
    EXIF orientation says, at most :data:`WORKING_SIDE` on its long side.

    Raises:
        InputError: the file is cut short or corrupt (400).
    """
    from PIL import ImageOps

    with _image_errors():
        image.load()
        try:
            ImageOps.exif_transpose(image, in_place=True)  # a phone stores photos sideways
        except (*PILLOW_FAILURES, KeyError, TypeError, struct.error):
            pass  # unreadable EXIF says nothing about orientation: read the image as stored
        return _to_gray(image)


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode PNG/JPEG bytes to a float grayscale array in [0, 1] (any mode), at most
    :data:`WORKING_SIDE` on its long side.

    Raises:
        InputError: empty, corrupt or not PNG/JPEG (400), or over ``max_pixels``
            pixels (413, a decompression-bomb guard, checked before decoding).
    """
    return decode_opened(open_image(data, max_pixels))


@contextmanager
def _image_errors() -> Iterator[None]:
    """Pillow's refusals of a file as the client's :class:`InputError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except Image.DecompressionBombError as exc:
        raise InputError(f"image too large to decode ({exception_text(exc)})", 413) from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"not a readable PNG or JPEG image ({exception_text(exc)})") from exc
    except PILLOW_FAILURES as exc:
        raise InputError(
            f"corrupt image, send a valid PNG or JPEG file: {exception_text(exc)}"
        ) from exc


def _to_gray(image: Image.Image) -> np.ndarray:
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas are background: flatten onto white, as a browser shows them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    top = MODE_TOPS.get(image.mode)
    if top is None:
        level = np.asarray(image.convert("L"))
        top = 255.0
    else:  # convert("L") would clip these to 0-255: a 16-bit scan would come out blank
        level = np.asarray(image)
    return _reduced(level, top)


def _reduced(level: np.ndarray, top: float) -> np.ndarray:
    """``level / top`` as float32, shrunk by a block mean to at most :data:`WORKING_SIDE`
    on its long side: a digit needs no more, and normalising costs by the pixel."""
    floats = level.dtype.kind == "f"  # integer levels are within [0, top] already
    height, width = level.shape
    factor = -(-max(height, width) // WORKING_SIDE)
    if factor > 1:
        # a side shorter than the block keeps one pixel (only a sliver of an image has one)
        rows, cols = min(factor, height), min(factor, width)
        height, width = height // rows, width // cols
        level = level[: height * rows, : width * cols]
        # rows of blocks, then across: two passes over memory in order, 2.5x quicker
        # than one mean over both axes
        down = level.reshape(height, rows, width * cols).sum(axis=1, dtype=np.float32)
        level = down.reshape(height, width, cols).sum(axis=2) / np.float32(rows * cols)
    gray = level.astype(np.float32, copy=False) / np.float32(top)
    return np.clip(gray, 0.0, 1.0) if floats else gray


def normalise_image(gray: np.ndarray) -> np.ndarray:
    """Turn a grayscale picture of a digit into a 784-pixel MNIST-style input.

    Inverts a light background, stretches contrast, crops to the ink, scales it to fit
    20x20 keeping its aspect, and centres it by centre of mass in 28x28.

    Returns:
        float32 ``[784]`` in ``[0, 1]``; all zeros for a blank picture.
    """
    from PIL import Image

    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    ink = 1.0 - gray if np.median(border) > 0.5 else gray.copy()
    ink = _flatten_background(ink)
    paper, darkest_paper = np.percentile(ink, [BACKGROUND_PERCENTILE, 5])
    # the paper's grain: its quartile lies ~1 sd above its 5th percentile
    low, high = float(paper + PAPER_GRAIN * (paper - darkest_paper)), float(ink.max())
    if high - low < 1e-3:
        return np.zeros(IMAGE_PIXELS, dtype=np.float32)
    ink = np.clip((ink - low) / (high - low), 0.0, 1.0)
    rows = np.flatnonzero((ink > INK_CUTOFF).any(axis=1))
    cols = np.flatnonzero((ink > INK_CUTOFF).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = crop.shape
    scale = DIGIT_BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = Image.fromarray((crop * 255).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    digit = np.asarray(small, dtype=np.float32) / np.float32(255.0)
    return _centre_by_mass(digit)


def _flatten_background(ink: np.ndarray) -> np.ndarray:
    """Subtract uneven lighting: in a photo the paper's shade can vary more across the
    picture than between paper and a faint stroke. A plane (the lighting's ramp) is fitted
    to the paper, which is the lower half of the pixels left after the previous fit, three
    times over, and its rise is subtracted; strokes, however thick, never enter the fit.
    Pictures under :data:`BACKGROUND_MIN_SIDE` pixels and even lighting are left alone."""
    height, width = ink.shape
    if min(height, width) < BACKGROUND_MIN_SIDE:
        return ink
    step = max(1, int(np.sqrt(height * width / BACKGROUND_SAMPLES)))
    rows, cols = np.mgrid[0:height:step, 0:width:step]
    design = np.stack([np.ones(rows.size), rows.ravel() / height, cols.ravel() / width], axis=1)
    values = ink[::step, ::step].ravel().astype(np.float64)
    plane = np.zeros(3)
    for _ in range(3):
        residual = values - design @ plane
        paper = residual <= np.median(residual)
        plane = np.linalg.lstsq(design[paper], values[paper], rcond=None)[0]
    down = plane[1] * np.arange(height)[:, None] / height
    across = plane[2] * np.arange(width)[None, :] / width
    ramp = down + across
    if float(np.ptp(ramp)) < BACKGROUND_EVEN:
        return ink
    return np.clip(ink - (ramp - ramp.min()), 0.0, 1.0).astype(np.float32)


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    field = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    height, width = digit.shape
    mass = float(digit.sum())
    if mass <= 0:
        return field.reshape(IMAGE_PIXELS)
    row_c = float((digit.sum(axis=1) * np.arange(height)).sum() / mass)
    col_c = float((digit.sum(axis=0) * np.arange(width)).sum() / mass)
    centre = IMAGE_SIDE / 2  # MNIST puts the centre of mass at (14, 14) in pixel indices
    top = int(np.clip(round(centre - row_c), 0, IMAGE_SIDE - height))
    left = int(np.clip(round(centre - col_c), 0, IMAGE_SIDE - width))
    field[top : top + height, left : left + width] = digit
    return field.reshape(IMAGE_PIXELS)


def image_to_pixels(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode and normalise one uploaded image: ``[1, 784]`` float32."""
    return opened_to_pixels(open_image(data, max_pixels))


def opened_to_pixels(image: Image.Image) -> np.ndarray:
    """Decode and normalise an image from :func:`open_image`: ``[1, 784]`` float32."""
    return normalise_image(decode_opened(image)).reshape(1, IMAGE_PIXELS)


def pixels_from_values(
    values: object, *, scale: str | None = None, may_hold_booleans: bool = True
) -> np.ndarray:
    """Validate JSON pixel values and return float32 ``[N, 784]`` in ``[0, 1]``.

    Accepted: one image (28x28 nested or 784 flat) or a list of them. Values are floats
    in [0, 1] or integers 0-255: with ``scale`` unset, any value above 1 means the
    0-255 scale; ``scale="unit"`` or ``"byte"`` says it explicitly.

    Args:
        values: the parsed JSON (or an array).
        scale: ``unit``, ``byte`` or None (told by the values).
        may_hold_booleans: False when the caller knows there are none (the JSON text has
            no ``true`` or ``false``), which spares a walk over the values.

    Raises:
        InputError: wrong shape, non-numbers, NaN/infinity or values out of range.
    """
    array = numeric_array(
        values,
        "pixels must be numbers in a 28x28 nested list or a flat list of 784",
        may_hold_booleans=may_hold_booleans,
    )
    array = _to_batch(array)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError("pixels must be finite numbers: NaN and infinity are not accepted")
    low, high = float(array.min()), float(array.max())
    byte_scale = scale == "byte" or (scale is None and high > 1.0)
    limit = 255.0 if byte_scale else 1.0
    if low < 0 or high > limit:
        raise InputError(
            "pixel values must be floats in [0, 1] or integers 0-255; "
            f"got values from {low:g} to {high:g}"
        )
    if byte_scale:
        return (array / 255.0).astype(np.float32)
    return array.astype(np.float32)


def numeric_array(values: object, what: str, *, may_hold_booleans: bool = True) -> np.ndarray:
    """JSON numbers as an array of the type numpy infers (integers stay integers).

    The type is inferred rather than asked for: ``dtype=float64`` would read ``"1"`` and
    ``true`` as 1.0. Inference still reads booleans among numbers as numbers, so when
    ``may_hold_booleans`` the values are looked through for them (a quick walk, which
    a caller skips when the JSON text has no ``true`` or ``false``).

    Raises:
        InputError: ``what`` (the shape that is accepted) and why the values are not it.
    """
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"{what} ({exception_text(exc)})") from exc
    if array.dtype.kind not in NUMBER_KINDS or (
        may_hold_booleans and not isinstance(values, np.ndarray) and _holds_booleans(values)
    ):
        raise InputError(f"{what}: {NOT_NUMBERS}")
    return array


def booleans_in(text: bytes, end: int | None = None) -> bool:
    """Whether JSON ``text`` (up to ``end``) may hold a boolean: False spares
    :func:`numeric_array` its walk over the values, for nearly every body.

    Looks at each ``t`` and ``f`` (found at memchr speed; numbers have neither, so only
    the keys' few), 3x quicker than searching for the words; a text with more of them
    than :data:`LETTER_LOOKS` may hold a boolean, for the walk to tell.
    """
    for word in JSON_BOOLEANS:
        at = text.find(word[:1], 0, end)
        for _ in range(LETTER_LOOKS):
            if at < 0:
                break
            if text.startswith(word, at, end):
                return True
            at = text.find(word[:1], at + 1, end)
        else:
            return True
    return False


def _holds_booleans(values: object) -> bool:
    """Whether nested lists hold a bool (``type(True)`` is a kind of int to numpy)."""
    pending = [values]
    while pending:
        value = pending.pop()
        if type(value) is bool:
            return True
        if isinstance(value, list | tuple):
            kinds = set(map(type, value))
            if bool in kinds:
                return True
            if list in kinds or tuple in kinds:
                pending.extend(v for v in value if isinstance(v, list | tuple))
    return False


def _to_batch(array: np.ndarray) -> np.ndarray:
    shape = array.shape
    if shape == (IMAGE_PIXELS,) or shape == (IMAGE_SIDE, IMAGE_SIDE):
        return array.reshape(1, IMAGE_PIXELS)
    if (len(shape) == 2 and shape[1] == IMAGE_PIXELS) or shape[1:] == (IMAGE_SIDE, IMAGE_SIDE):
        if shape[0] == 0:
            raise InputError("no images: send at least one")
        return array.reshape(shape[0], IMAGE_PIXELS)
    described = "x".join(str(d) for d in shape) or "a single number"
    raise InputError(f"image must be 28x28 or 784 values, got {described}")


def exception_text(exc: BaseException) -> str:
    """An exception's message fit for a client: no object reprs, at most
    :data:`SHORT_CHARS` characters."""
    text = INTERNAL_REPR.sub("", str(exc)).strip()
    return text if len(text) <= SHORT_CHARS else text[: SHORT_CHARS - 3] + "..."
