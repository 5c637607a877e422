"""Training-time distortions of MNIST digits: other people's handwriting, other pens.

One random warp per image, applied in a single resampling pass over a whole batch
(``scipy.ndimage.map_coordinates`` on ``[N, 28, 28]``): a rotation, an anisotropic
scale, a shear and a shift, plus, for a share of the images, an elastic distortion
(Simard et al., 2003: a smoothed random displacement field) and a thicker or thinner
stroke (grey dilation or erosion). The parameters are drawn from ``numpy``'s
``Generator``, so a seed fixes every epoch's images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mnistops.features import IMAGE_PIXELS, IMAGE_SIDE


@dataclass(frozen=True)
class Distortions:
    """How far each distortion goes (uniform draws in ``[-x, x]`` unless said)."""

    rotation_deg: float = 15.0
    scale: float = 0.15
    """Relative change of each axis' size."""
    shear: float = 0.15
    shift_px: float = 2.5
    elastic_share: float = 0.5
    """Share of images given an elastic distortion..."""
    elastic_alpha: float = 20.0
    """... of this strength (pixels, before smoothing) ..."""
    elastic_sigma: float = 4.0
    """... smoothed by a Gaussian of this width."""
    thicker_share: float = 0.2
    thinner_share: float = 0.15


def distort(
    images: np.ndarray, rng: np.random.Generator, how: Distortions = Distortions()
) -> np.ndarray:
    """Distorted copies of ``images`` (float ``[N, 784]`` or ``[N, 28, 28]`` in [0, 1]).

    Returns:
        float32 ``[N, 784]`` in ``[0, 1]``.
    """
    from scipy import ndimage

    grid = np.asarray(images, dtype=np.float32).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    n = len(grid)
    if n == 0:
        return grid.reshape(0, IMAGE_PIXELS)
    grid = _strokes(grid, rng, how)
    # Output pixel (r, c) samples the input at centre + A @ ((r, c) - centre) - shift.
    angle = np.deg2rad(rng.uniform(-how.rotation_deg, how.rotation_deg, n))
    sy = 1.0 + rng.uniform(-how.scale, how.scale, n)
    sx = 1.0 + rng.uniform(-how.scale, how.scale, n)
    shear = rng.uniform(-how.shear, how.shear, n)
    cos, sin = np.cos(angle), np.sin(angle)
    # inverse map: rotate by -angle, unshear, unscale
    a = np.empty((n, 2, 2))
    a[:, 0, 0], a[:, 0, 1] = cos / sy, (sin - shear * cos) / sy
    a[:, 1, 0], a[:, 1, 1] = -sin / sx, (cos + shear * sin) / sx
    shift = rng.uniform(-how.shift_px, how.shift_px, (n, 2))
    centre = (IMAGE_SIDE - 1) / 2
    axis = np.arange(IMAGE_SIDE) - centre
    rr, cc = np.meshgrid(axis, axis, indexing="ij")
    out = np.stack([rr.ravel(), cc.ravel()])  # [2, 784]
    source = np.einsum("nij,jp->nip", a, out) + centre - shift[:, :, None]  # [N, 2, 784]
    source = source.reshape(n, 2, IMAGE_SIDE, IMAGE_SIDE)
    elastic = rng.random(n) < how.elastic_share
    if elastic.any():
        noise = rng.uniform(-1.0, 1.0, (2, int(elastic.sum()), IMAGE_SIDE, IMAGE_SIDE))
        field = ndimage.gaussian_filter(noise, sigma=(0, 0, how.elastic_sigma, how.elastic_sigma))
        source[elastic] += how.elastic_alpha * field.transpose(1, 0, 2, 3)
    index = np.broadcast_to(
        np.arange(n, dtype=np.float64)[:, None, None], (n, IMAGE_SIDE, IMAGE_SIDE)
    )
    coords = np.stack([index, source[:, 0], source[:, 1]])
    warped = ndimage.map_coordinates(grid, coords, order=1, mode="constant", cval=0.0)
    return np.clip(warped, 0.0, 1.0).astype(np.float32).reshape(n, IMAGE_PIXELS)


def _strokes(grid: np.ndarray, rng: np.random.Generator, how: Distortions) -> np.ndarray:
    from scipy import ndimage

    draw = rng.random(len(grid))
    thicker = draw < how.thicker_share
    thinner = (draw >= how.thicker_share) & (draw < how.thicker_share + how.thinner_share)
    if not (thicker.any() or thinner.any()):
        return grid
    grid = grid.copy()
    if thicker.any():
        grid[thicker] = ndimage.grey_dilation(grid[thicker], size=(1, 2, 2))
    if thinner.any():
        # a 2x2 minimum halves a stroke; the blend keeps the thinnest ones from vanishing
        eroded = ndimage.grey_erosion(grid[thinner], size=(1, 2, 2))
        grid[thinner] = 0.3 * grid[thinner] + 0.7 * eroded
    return grid
