"""What the protocol tests compare with: /predict's own answers, and digits as PNG files."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.support.server import RunningServer


def predict_answers(server: RunningServer, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """/predict's answer for ``images``: probabilities ``[N, 10]`` and digits ``[N]``."""
    answer = server.client().post("/predict", json={"images": images.tolist()}).json()
    probabilities = np.array([p["probabilities"] for p in answer["predictions"]])
    return probabilities, np.array([p["digit"] for p in answer["predictions"]])


def png(image: np.ndarray) -> bytes:
    """A uint8 28x28 digit as a 56x56 PNG of dark ink on white, as a photo or scan is."""
    buffer = io.BytesIO()
    Image.fromarray(255 - image).resize((56, 56)).save(buffer, "PNG")
    return buffer.getvalue()
