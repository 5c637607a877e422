"""Decode uploaded images and normalise them the MNIST way; validate pixel arrays.

MNIST digits are white ink on black, the ink's bounding box scaled to fit 20x20
(keeping aspect) and placed in a 28x28 field so that its centre of mass is at the
centre. :func:`normalise_image` does the same to any photo or drawing.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from mnistops.errors import MnistopsError
from mnistops.features import IMAGE_PIXELS, IMAGE_SIDE

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


class InputError(MnistopsError):
    """A client sent something that is not an image or pixel array we accept."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.http_status = status


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode PNG/JPEG bytes to a float grayscale array in [0, 1] (any size, any mode).

    Raises:
        InputError: empty, corrupt or not PNG/JPEG (400), or over ``max_pixels``
            pixels (413, a decompression-bomb guard, checked before decoding).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError("empty image: send PNG or JPEG bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
            width, height = image.size
            if width * height > max_pixels:
                raise InputError(
                    f"image is {width}x{height} = {width * height} pixels; "
                    f"at most {max_pixels} are accepted",
                    status=413,
                )
            image.load()
    except InputError:
        raise
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise InputError(f"not a readable PNG or JPEG image ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"corrupt image, send a valid PNG or JPEG file: {exc}") from exc
    return _to_gray(image)


def _to_gray(image: object) -> np.ndarray:
    from PIL import Image

    assert isinstance(image, Image.Image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas are background: flatten onto white, as a browser shows them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    gray = np.asarray(image.convert("L"), dtype=np.float32) / np.float32(255.0)
    return gray


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
    return normalise_image(decode_image(data, max_pixels)).reshape(1, IMAGE_PIXELS)


def pixels_from_values(values: object, *, scale: str | None = None) -> np.ndarray:
    """Validate JSON pixel values and return float32 ``[N, 784]`` in ``[0, 1]``.

    Accepted: one image (28x28 nested or 784 flat) or a list of them. Values are floats
    in [0, 1] or integers 0-255: with ``scale`` unset, any value above 1 means the
    0-255 scale; ``scale="unit"`` or ``"byte"`` says it explicitly.

    Raises:
        InputError: wrong shape, non-numbers, NaN/infinity or values out of range.
    """
    try:
        array = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"pixels must be numbers in a 28x28 nested list or a flat list of 784 ({_short(exc)})"
        ) from exc
    array = _to_batch(array)
    if not np.isfinite(array).all():
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
        array = array / 255.0
    return array.astype(np.float32)


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


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 120 else text[:117] + "..."
