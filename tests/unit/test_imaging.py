"""Image decoding and MNIST-style normalisation; pixel-array validation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageDraw

from mnistops.config import Settings
from mnistops.features import image_features
from mnistops.imaging import (
    WORKING_SIDE,
    InputError,
    decode_image,
    image_to_pixels,
    pixels_from_values,
)

pytestmark = pytest.mark.unit
MAX_PIXELS = 40_000_000


def _png(array: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_drawn_digit_off_centre_on_white_comes_out_centred() -> None:
    canvas = Image.new("L", (600, 400), 255)
    ImageDraw.Draw(canvas).line([(420, 40), (440, 360)], fill=0, width=30)  # a big "1", right side
    pixels = image_to_pixels(_png(np.asarray(canvas)), MAX_PIXELS)
    _, _, _, row, col = image_features(pixels)[0]
    assert 12.5 <= row <= 14.5 and 12.5 <= col <= 14.5
    grid = pixels.reshape(28, 28)
    rows = np.flatnonzero(grid.max(axis=1) > 0.1)
    assert rows[-1] - rows[0] + 1 <= 21  # fitted into the 20x20 box
    assert grid[0].max() == 0 and grid[:, 0].max() == 0  # a clear border, as in MNIST


def test_transparent_drawing_is_read_as_ink_on_white() -> None:
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)
    rgba[20:80, 45:55] = (0, 0, 0, 255)  # black stroke on a transparent background
    pixels = image_to_pixels(_png(rgba, "RGBA"), MAX_PIXELS)
    assert pixels.max() == pytest.approx(1.0, abs=0.05) and 0.02 < pixels.mean() < 0.3


def test_blank_image_gives_blank_input() -> None:
    assert not image_to_pixels(_png(np.full((50, 50), 255, np.uint8)), MAX_PIXELS).any()


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(InputError) as excinfo:
        decode_image(_png(np.zeros((300, 300), np.uint8)), max_pixels=10_000)
    assert excinfo.value.http_status == 413


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_decoder_never_fails_except_with_input_error(data: bytes) -> None:
    try:
        pixels = image_to_pixels(data, MAX_PIXELS)
    except InputError as exc:
        assert exc.http_status in (400, 413)
    else:
        assert pixels.shape == (1, 784)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 120),
    height=st.integers(1, 120),
    mode=st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16"]),
    seed=st.integers(0, 2**16),
    fmt=st.sampled_from(["PNG", "JPEG"]),
)
def test_any_real_image_normalises_to_784_values_in_range(
    width: int, height: int, mode: str, seed: int, fmt: str
) -> None:
    array = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    image = Image.fromarray(array).convert(mode if fmt == "PNG" else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    pixels = image_to_pixels(buffer.getvalue(), MAX_PIXELS)
    assert pixels.shape == (1, 784) and pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=3),
        lambda inner: st.lists(inner, max_size=30),
        max_leaves=60,
    )
)
def test_pixel_validation_accepts_or_explains(values: object) -> None:
    try:
        pixels = pixels_from_values(values)
    except InputError as exc:
        assert str(exc)
    else:
        assert pixels.shape[1] == 784 and np.isfinite(pixels).all()


@pytest.mark.parametrize(
    ("values", "scale", "expected_max"),
    [([0.5] * 784, None, 0.5), ([255] * 784, None, 1.0), ([1] * 784, "byte", 1 / 255)],
)
def test_scale_rule(values: list[float], scale: str | None, expected_max: float) -> None:
    assert pixels_from_values(values, scale=scale).max() == pytest.approx(expected_max)


def test_a_photo_on_unevenly_lit_grey_paper_is_read_like_the_clean_digit() -> None:
    from mnistops.imaging import normalise_image

    clean = np.zeros((120, 120))
    clean[20:100, 55:65] = 1.0  # a "1" on white paper, as ink
    clean[20:30, 40:65] = 1.0
    light = np.linspace(0.55, 0.85, 120)[None, :] * np.ones((120, 1))
    noise = np.random.default_rng(0).normal(0, 0.02, clean.shape)
    photo = np.clip(light * (1 - 0.7 * clean) + noise, 0, 1)
    expected = normalise_image(1.0 - clean)
    got = normalise_image(photo)
    # the same ink, placed the same way: no paper counted as ink
    ink, wanted = got > 0.5, expected > 0.5
    assert (ink & wanted).sum() / (ink | wanted).sum() > 0.9


DEFAULT_CAP = Settings().max_image_pixels


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _pencil_seven(size: tuple[int, int]) -> Image.Image:
    """A pencil "7" on lit grey paper, drawn at ``size`` (width, height)."""
    width, height = size
    unit = min(width, height) / 100
    canvas = Image.new("L", size, 200)
    draw = ImageDraw.Draw(canvas)
    top, left = (height - 80 * unit) / 2, (width - 50 * unit) / 2
    corner = (left + 50 * unit, top)
    draw.line([(left, top), corner], fill=90, width=round(8 * unit))
    draw.line([corner, (left + 15 * unit, top + 80 * unit)], fill=90, width=round(8 * unit))
    return canvas


def _ink_agreement(got: np.ndarray, expected: np.ndarray) -> float:
    """Intersection over union of the pixels that are clearly ink."""
    ink, wanted = got > 0.5, expected > 0.5
    return float((ink & wanted).sum() / (ink | wanted).sum())


def test_a_tiny_png_of_a_huge_one_bit_image_is_refused_before_decoding() -> None:
    data = _encoded(Image.new("1", (6300, 6300)), "PNG")
    assert len(data) < 10_000  # a few KB that would decode to 40 million pixels
    with pytest.raises(InputError) as excinfo:
        image_to_pixels(data, DEFAULT_CAP)
    assert excinfo.value.http_status == 413 and "6300x6300" in str(excinfo.value)


def test_a_phone_sized_jpeg_is_decoded_reduced_and_read_right() -> None:
    photo = _pencil_seven((4000, 3000))
    noise = np.random.default_rng(0).normal(0, 4, (3000, 4000))
    photo = Image.fromarray(np.clip(np.asarray(photo) + noise, 0, 255).astype(np.uint8))
    data = _encoded(photo.convert("RGB"), "JPEG", quality=90)
    gray = decode_image(data, DEFAULT_CAP)
    assert max(gray.shape) <= WORKING_SIDE
    expected = image_to_pixels(_encoded(_pencil_seven((400, 300)), "PNG"), DEFAULT_CAP)
    assert _ink_agreement(image_to_pixels(data, DEFAULT_CAP), expected) > 0.85


def test_a_large_png_is_reduced_to_the_working_side_keeping_its_aspect() -> None:
    gray = decode_image(_encoded(_pencil_seven((1800, 1200)), "PNG"), DEFAULT_CAP)
    assert gray.shape == (300, 450)  # 4x4 blocks: the smallest whole factor that fits


def test_a_sixteen_bit_png_reads_as_its_eight_bit_version() -> None:
    eight = np.asarray(_pencil_seven((120, 100)))
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)  # 0-65535, as a scanner writes
    as_eight, as_sixteen = _encoded(Image.fromarray(eight), "PNG"), _encoded(sixteen, "PNG")
    got = decode_image(as_sixteen, DEFAULT_CAP)
    assert got == pytest.approx(decode_image(as_eight, DEFAULT_CAP), abs=1e-3)
    expected = image_to_pixels(as_eight, DEFAULT_CAP)
    assert _ink_agreement(image_to_pixels(as_sixteen, DEFAULT_CAP), expected) > 0.99


@pytest.mark.parametrize(
    ("orientation", "stored"), [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)]
)
def test_a_jpeg_stored_sideways_is_read_upright_by_its_exif_orientation(
    orientation: int, stored: Image.Transpose
) -> None:
    upright = _pencil_seven((300, 200))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation  # "rotate this to view it": what a phone writes
    sideways = _encoded(upright.transpose(stored), "JPEG", quality=95, exif=exif)
    expected = image_to_pixels(_encoded(upright, "PNG"), DEFAULT_CAP)
    assert _ink_agreement(image_to_pixels(sideways, DEFAULT_CAP), expected) > 0.85


def test_an_unreadable_file_is_refused_without_python_internals_in_the_message() -> None:
    with pytest.raises(InputError) as excinfo:
        image_to_pixels(b"hello, not an image", DEFAULT_CAP)
    message = str(excinfo.value)
    assert message == "not a readable PNG or JPEG image (cannot identify image file)"
    assert "object at 0x" not in message


@pytest.mark.parametrize(
    "values",
    [
        ["1"] * 784,
        [True] * 784,
        [True] + [2] * 783,
        [[0.5] * 28] * 27 + [[False] + [0.5] * 27],
        [None] * 784,
        [0.5] * 783 + [None],
    ],
    ids=[
        "strings",
        "booleans",
        "a boolean among integers",
        "a boolean among floats",
        "nulls",
        "a null",
    ],
)
def test_pixel_values_that_are_not_numbers_are_refused_saying_so(values: list[object]) -> None:
    with pytest.raises(InputError, match="strings, booleans and null are not numbers"):
        pixels_from_values(values)
