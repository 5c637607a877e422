"""Batch inference over files (.npy, .npz, PNG, JPEG) through the predictor."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnistops.config import Settings
from mnistops.errors import MnistopsError
from mnistops.features import IMAGE_PIXELS
from mnistops.imaging import InputError, image_to_pixels, pixels_from_values

ARRAY_KEYS = ("x", "images", "x_test", "x_train")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ACCEPTED_FILES = ".png or .jpg images, or .npy/.npz arrays of 28x28 or 784 values"


class BatchInputError(MnistopsError):
    """A file cannot be read as images."""


@dataclass
class Predictions:
    """Probabilities for every image of every file, in order."""

    sources: list[tuple[str, int]] = field(default_factory=list)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 10), np.float32))

    def __len__(self) -> int:
        return len(self.sources)

    def labels(self) -> Iterator[tuple[str, int, int, float]]:
        digits = self.probabilities.argmax(axis=1)
        for (source, index), digit, probs in zip(
            self.sources, digits, self.probabilities, strict=True
        ):
            yield source, index, int(digit), float(probs[digit])

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                ["source", "index", "digit", "confidence", *(f"p{d}" for d in range(10))]
            )
            for (source, index, digit, confidence), probs in zip(
                self.labels(), self.probabilities, strict=True
            ):
                writer.writerow(
                    [source, index, digit, f"{confidence:.6f}", *(f"{p:.6f}" for p in probs)]
                )


def read_pixels(path: Path, max_image_pixels: int = 40_000_000) -> np.ndarray:
    """Pixels ``[N, 784]`` float32 in [0, 1] from one file.

    Raises:
        BatchInputError: unreadable file or unsupported contents.
    """
    suffix = path.suffix.lower()
    try:
        if suffix in IMAGE_SUFFIXES:
            return image_to_pixels(path.read_bytes(), max_image_pixels)
        if suffix == ".npy":
            return _array_pixels(np.load(path, allow_pickle=False))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                key = next((k for k in ARRAY_KEYS if k in archive), archive.files[0])
                return _array_pixels(archive[key])
    except OSError as exc:
        raise BatchInputError(
            f"cannot read {path} ({exc.strerror or exc}); give {ACCEPTED_FILES}"
        ) from exc
    except (ValueError, InputError, IndexError) as exc:
        raise BatchInputError(f"{path}: {exc}; give {ACCEPTED_FILES}") from exc
    raise BatchInputError(f"{path}: unsupported file type; give {ACCEPTED_FILES}")


def _array_pixels(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.reshape(-1, IMAGE_PIXELS).astype(np.float32) / np.float32(255.0)
    return pixels_from_values(array)


def predict_files(paths: list[Path], settings: Settings, *, batch_size: int = 4096) -> Predictions:
    """Run the model named by ``settings.model_uri`` over every image in ``paths``."""
    from mnistops.predictor import Predictor
    from mnistops.registry import resolve

    arrays = [read_pixels(p, settings.max_image_pixels) for p in paths]
    predictor = Predictor(
        resolve(settings.model_uri, settings),
        intra_op_threads=os.cpu_count() or 1,
        precision=settings.precision,
    )
    predictor.load()
    pixels = np.concatenate(arrays) if arrays else np.zeros((0, IMAGE_PIXELS), np.float32)
    probs = [
        predictor.predict(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)
    ]
    sources = [(str(p), i) for p, a in zip(paths, arrays, strict=True) for i in range(len(a))]
    return Predictions(sources, np.concatenate(probs) if probs else np.zeros((0, 10), np.float32))
