"""Image decoding and MNIST-style normalisation; pixel-array validation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from mnistops.features import image_features
from mnistops.imaging import (
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
