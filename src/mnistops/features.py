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

_MOMENTS = np.stack(
    [
        np.ones(IMAGE_PIXELS),
        np.repeat(np.arange(IMAGE_SIDE), IMAGE_SIDE),  # each pixel's row
        np.tile(np.arange(IMAGE_SIDE), IMAGE_SIDE),  # and column
    ],
    axis=1,
).astype(np.float32)


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
    # one product gives the mass and both moments: a few calls, whatever the batch size
    # (the served route computes these for every request)
    mass, row_moment, col_moment = (flat @ _MOMENTS).astype(np.float64).T
    squares = np.einsum("ij,ij->i", flat, flat).astype(np.float64)
    mean = mass / IMAGE_PIXELS
    std = np.sqrt(np.maximum(squares / IMAGE_PIXELS - mean * mean, 0.0))
    ink = np.count_nonzero(flat > INK_THRESHOLD, axis=1) / IMAGE_PIXELS
    safe = np.where(mass > 0, mass, 1.0)
    centre = (IMAGE_SIDE - 1) / 2
    row = np.where(mass > 0, row_moment / safe, centre)
    col = np.where(mass > 0, col_moment / safe, centre)
    return np.stack([mean, std, ink, row, col], axis=1).astype(np.float32)
