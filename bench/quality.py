"""The model suite's quality half: accuracy on digits that are not MNIST's, and "not a digit".

Every set is generated from the MNIST test digits (or, for the out-of-distribution sets,
from nothing, noise, random strokes and Fashion-MNIST) as the *picture* a user would send,
and read through the image route's own preprocessing (``imaging.normalise_image``, after a
PNG or JPEG round trip where a file would be sent), then scored by the served ONNX model
with its ``is_digit`` check. ``python -m bench.quality MODEL_FOLDER`` prints the table, after
the INT8 model's throughput against the FP32 one's.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistops.features import IMAGE_PIXELS

Picture = np.ndarray
"""A float grey picture in [0, 1], any size (what the image decoder returns)."""


@dataclass(frozen=True)
class QualityRow:
    name: str
    images: int
    accuracy: float | None
    """Share read right (digit sets), None for the out-of-distribution sets."""
    rejected: float
    """Share answered ``is_digit: false``."""


def _png(picture: Picture) -> Picture:
    from PIL import Image

    from mnistops.imaging import decode_image

    buffer = io.BytesIO()
    Image.fromarray((np.clip(picture, 0, 1) * 255).round().astype(np.uint8)).save(buffer, "PNG")
    return decode_image(buffer.getvalue(), 1 << 24)


def _jpeg(picture: Picture, quality: int) -> Picture:
    from PIL import Image

    from mnistops.imaging import decode_image

    buffer = io.BytesIO()
    image = Image.fromarray((np.clip(picture, 0, 1) * 255).round().astype(np.uint8))
    image.save(buffer, "JPEG", quality=quality)
    return decode_image(buffer.getvalue(), 1 << 24)


def _zoom(digit: np.ndarray, factor: int) -> np.ndarray:
    from scipy import ndimage

    return np.clip(ndimage.zoom(digit, factor, order=1), 0, 1)


def rotated(digit: np.ndarray, rng: np.random.Generator) -> Picture:
    from scipy import ndimage

    angle = 15.0 * rng.choice([-1.0, 1.0])
    return _png(np.clip(ndimage.rotate(np.pad(digit, 6), angle, reshape=False, order=1), 0, 1))


def thick(digit: np.ndarray, rng: np.random.Generator) -> Picture:
    from scipy import ndimage

    return _png(ndimage.grey_dilation(_zoom(digit, 4), footprint=_disk(4)))


def thin(digit: np.ndarray, rng: np.random.Generator) -> Picture:
    from scipy import ndimage

    return _png(ndimage.grey_erosion(_zoom(digit, 4), footprint=_disk(2)))


def off_centre(digit: np.ndarray, rng: np.random.Generator) -> Picture:
    canvas = np.zeros((64, 64))
    top, left = rng.integers(0, 36, 2)
    canvas[top : top + 28, left : left + 28] = digit
    return _png(canvas)


def low_contrast(digit: np.ndarray, rng: np.random.Generator) -> Picture:
    return _png(0.45 + 0.15 * digit)


def photo(digit: np.ndarray, rng: np.random.Generator) -> Picture:
    """Dark ink on grey paper, unevenly lit, a little blurred and noisy, JPEG at 60."""
    from scipy import ndimage

    ink = ndimage.gaussian_filter(_zoom(np.pad(digit, 4), 3), 1.0)
    size = ink.shape[0]
    light = np.linspace(0.62, 0.82, size)[None, :] * np.linspace(0.95, 1.05, size)[:, None]
    paper = light + rng.normal(0.0, 0.025, ink.shape)
    return _jpeg(paper * (1.0 - 0.75 * ink), quality=60)


def canvas(digit: np.ndarray, rng: np.random.Generator) -> Picture:
    """Black strokes with hard edges on a white 280x280 canvas, as the page sends them."""
    strokes = (_zoom(digit, 10) > 0.5).astype(np.float64)
    return _png(1.0 - strokes)


def blank(rng: np.random.Generator) -> Picture:
    return _png(np.full((280, 280), rng.choice([0.0, 1.0])))


def noise(rng: np.random.Generator) -> Picture:
    return _png(rng.random((28, 28)) * rng.uniform(0.3, 1.0))


def scribble(rng: np.random.Generator) -> Picture:
    """Random strokes: four to ten segments of a random walk across the canvas."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (280, 280), 255)
    draw = ImageDraw.Draw(image)
    points = [tuple(rng.uniform(20, 260, 2)) for _ in range(int(rng.integers(5, 12)))]
    draw.line(points, fill=0, width=int(rng.integers(12, 24)), joint="curve")
    return _png(np.asarray(image, dtype=np.float64) / 255.0)


def _disk(radius: int) -> np.ndarray:
    axis = np.arange(-radius, radius + 1)
    return (axis[:, None] ** 2 + axis[None, :] ** 2) <= radius**2


DIGIT_SETS: dict[str, Callable[[np.ndarray, np.random.Generator], Picture]] = {
    "rotated ±15°": rotated,
    "thick strokes": thick,
    "thin strokes": thin,
    "off-centre": off_centre,
    "low contrast": low_contrast,
    "photo of grey paper, JPEG": photo,
    "drawn on the page's canvas": canvas,
}
NOT_DIGIT_SETS: dict[str, Callable[[np.random.Generator], Picture]] = {
    "blank": blank,
    "noise": noise,
    "scribble": scribble,
}


def measure(model_folder: Path, images: int = 10000, seed: int = 0) -> list[QualityRow]:
    """Every set's figures for the model in ``model_folder``."""
    from mnistops.bundle import load_bundle
    from mnistops.config import load_settings
    from mnistops.data import DataError, load_fashion, load_mnist
    from mnistops.imaging import normalise_image
    from mnistops.predictor import Predictor

    predictor = Predictor(load_bundle(model_folder))
    predictor.load()
    settings = load_settings()
    mnist = load_mnist(settings)
    digits = mnist.x_test[:images].astype(np.float64) / 255.0
    labels = mnist.y_test[:images]
    rng = np.random.default_rng(seed)

    def score(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = predictor.predict(pixels)
        return probs.argmax(axis=1), predictor.is_digit(pixels, probs)

    rows = []
    clean = digits.reshape(-1, IMAGE_PIXELS).astype(np.float32)
    for name, pixels in (("MNIST test (pixels)", clean),):
        read, seen = score(pixels)
        rows.append(QualityRow(name, len(pixels), float((read == labels).mean()), 1 - seen.mean()))
    routed = np.stack([normalise_image(_png(d)) for d in digits])
    read, seen = score(routed)
    rows.append(QualityRow("MNIST test (image route)", images, float((read == labels).mean()),
                           1 - seen.mean()))  # fmt: skip
    for name, make in DIGIT_SETS.items():
        pixels = np.stack([normalise_image(make(d, rng)) for d in digits])
        read, seen = score(pixels)
        rows.append(QualityRow(name, images, float((read == labels).mean()), 1 - seen.mean()))
    others = min(images, 2000)
    for name, make_other in NOT_DIGIT_SETS.items():
        pixels = np.stack([normalise_image(make_other(rng)) for _ in range(others)])
        _, seen = score(pixels)
        rows.append(QualityRow(name, others, None, float(1 - seen.mean())))
    try:
        fashion = load_fashion(settings).x_test[:images].astype(np.float64) / 255.0
    except DataError:
        return rows
    _, seen = score(fashion.reshape(-1, IMAGE_PIXELS).astype(np.float32))
    rows.append(QualityRow("Fashion-MNIST (pixels)", len(fashion), None, float(1 - seen.mean())))
    pixels = np.stack([normalise_image(_png(f)) for f in fashion])
    _, seen = score(pixels)
    rows.append(QualityRow("Fashion-MNIST (image route)", len(fashion), None, 1 - seen.mean()))
    return rows


def precision_speed(model_folder: Path, rounds: int = 3, seconds: float = 3.0) -> dict[str, float]:
    """Images per second of the FP32 and the INT8 model on batches of 1,024 test images,
    one onnxruntime thread, in interleaved rounds (best of each)."""
    import time

    from mnistops.bundle import load_bundle
    from mnistops.config import load_settings
    from mnistops.data import load_mnist
    from mnistops.predictor import Predictor

    bundle = load_bundle(model_folder)
    batch = load_mnist(load_settings()).x_test[:1024].reshape(-1, IMAGE_PIXELS) / 255.0
    predictors = {p: Predictor(bundle, precision=p) for p in ("fp32", "int8")}
    best = dict.fromkeys(predictors, 0.0)
    for predictor in predictors.values():
        predictor.load()
    for _ in range(rounds):
        for precision, predictor in predictors.items():
            started, done = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                predictor.predict(batch)
                done += len(batch)
            best[precision] = max(best[precision], done / (time.perf_counter() - started))
    return best


def table(rows: list[QualityRow]) -> str:
    lines = ["| set | images | read right | `is_digit: false` |", "|---|---|---|---|"]
    for row in rows:
        accuracy = "" if row.accuracy is None else f"{row.accuracy:.2%}"
        lines.append(f"| {row.name} | {row.images} | {accuracy} | {row.rejected:.2%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    speed = precision_speed(folder)
    print(
        f"images/s, batch 1,024, one thread: FP32 {speed['fp32']:,.0f}, INT8 "
        f"{speed['int8']:,.0f} ({speed['int8'] / speed['fp32']:.2f}x)"
    )
    print(table(measure(folder)))
