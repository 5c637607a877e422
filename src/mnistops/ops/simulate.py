"""Traffic simulator: send real images (MNIST test, Fashion-MNIST, shifted digits) to a
running service, for demos, tests and benchmarks."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum

import httpx
import numpy as np

from mnistops.config import Settings
from mnistops.errors import ServiceUnavailableError


class Scenario(StrEnum):
    """The kinds of traffic the simulator sends (described in :func:`scenario_images`)."""

    CLEAN = "clean"
    FASHION = "fashion"
    ROTATE = "rotate"
    NOISE = "noise"
    INVERT = "invert"
    MIX = "mix"


SCENARIOS = tuple(Scenario)
NOISE_STD = 0.5
ROTATION_DEGREES = 60.0


def rotate(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate uint8 ``[N, 28, 28]`` images about their centre (Pillow, bilinear)."""
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(i).rotate(degrees, Image.Resampling.BILINEAR)) for i in images]
    )


def scenario_images(
    name: str, settings: Settings, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` uint8 images ``[n, 28, 28]`` of a scenario, and their digit labels if any.

    clean: MNIST test digits; fashion: Fashion-MNIST test images (no digit labels);
    rotate: digits turned 60 degrees; noise: digits with heavy Gaussian noise; invert:
    dark digits on white; mix: a random blend of all of them (no labels).
    """
    from mnistops.data import load_fashion, load_mnist

    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    rng = np.random.default_rng(seed)
    if name == "fashion":
        fashion = load_fashion(settings).x_test
        return fashion[rng.integers(0, len(fashion), n)], None
    if name == "mix":
        parts = [scenario_images(s, settings, n, seed + i)[0] for i, s in enumerate(SCENARIOS[:-1])]
        choice = rng.integers(0, len(parts), n)
        return np.stack([parts[c][i] for i, c in enumerate(choice)]), None
    mnist = load_mnist(settings)
    index = rng.integers(0, len(mnist.x_test), n)
    digits, labels = mnist.x_test[index], mnist.y_test[index]
    if name == "rotate":
        digits = rotate(digits, ROTATION_DEGREES)
    elif name == "invert":
        digits = 255 - digits
    elif name == "noise":
        noisy = digits / 255.0 + rng.normal(0.0, NOISE_STD, digits.shape)
        digits = (np.clip(noisy, 0, 1) * 255).round().astype(np.uint8)
    return digits, labels


def simulate(
    url: str,
    images: np.ndarray,
    *,
    rate: float | None = None,
    labels: np.ndarray | None = None,
    feedback: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Counter[str]:
    """POST each image to ``url``/predict (at most ``rate`` per second); count outcomes.

    With ``feedback`` and ``labels``, also sends each true label to /feedback.

    Raises:
        ServiceUnavailableError: the first request found no service (later failures are counted).
    """
    outcomes: Counter[str] = Counter()
    interval = 1.0 / rate if rate else 0.0
    next_at = time.perf_counter()
    with httpx.Client(base_url=url.rstrip("/"), timeout=30) as client:
        for i, image in enumerate(images):
            if interval:
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))
            try:
                response = client.post("/predict", json={"image": image.tolist()})
                outcomes[str(response.status_code)] += 1
                if feedback and labels is not None and response.status_code == 200:
                    body = {"request_id": response.json()["request_id"], "label": int(labels[i])}
                    client.post("/feedback", json=body)
            except httpx.TransportError as exc:
                if i == 0:
                    raise ServiceUnavailableError(url, exc) from exc
                outcomes[type(exc).__name__] += 1
            if progress is not None:
                progress(1)
    return outcomes
