"""Per-image statistics shared by training (the drift reference) and serving (live traffic).

Both sides call :func:`image_features` on the same input the model sees, a float32
array of shape ``[N, 784]`` with pixels in ``[0, 1]`` (ink high, background 0), so
the reference profile and the live statistics cannot disagree.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIDE = 28
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10
INK_THRESHOLD = 0.5
"""A pixel brighter than this counts as ink."""

FEATURE_NAMES: tuple[str, ...] = (
    "pixel_mean",
    "pixel_std",
    "ink_fraction",
    "centroid_row",
    "centroid_col",
)
"""Names of the columns :func:`image_features` returns, in order."""

_COORDS = np.arange(IMAGE_SIDE, dtype=np.float32)


def image_features(images: np.ndarray) -> np.ndarray:
    """Compute the per-image statistics of a batch.

    Args:
        images: float array ``[N, 784]`` (or ``[N, 28, 28]``), pixels in ``[0, 1]``.

    Returns:
        float32 array ``[N, len(FEATURE_NAMES)]``: pixel mean, pixel standard
        deviation, fraction of ink pixels, and the row and column of the centre
        of mass of the ink (0..27; 13.5 for a blank image).
    """
    flat = np.asarray(images, dtype=np.float32).reshape(-1, IMAGE_PIXELS)
    grid = flat.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    mass = flat.sum(axis=1)
    safe = np.where(mass > 0, mass, 1.0)
    centre = (IMAGE_SIDE - 1) / 2
    row = np.where(mass > 0, grid.sum(axis=2) @ _COORDS / safe, centre)
    col = np.where(mass > 0, grid.sum(axis=1) @ _COORDS / safe, centre)
    return np.stack(
        [
            flat.mean(axis=1),
            flat.std(axis=1),
            (flat > INK_THRESHOLD).mean(axis=1),
            row,
            col,
        ],
        axis=1,
    ).astype(np.float32)
