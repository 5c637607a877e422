"""The service in process: create_app around a fake predictor and a tiny bundle folder,
called through httpx's ASGI transport (no server, no model, no network)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from mnistops import imaging
from mnistops.bundle import ONNX_FILE, ModelBundle, ReferenceProfile, load_bundle, write_metadata
from mnistops.config import Settings
from mnistops.features import FEATURE_NAMES, IMAGE_PIXELS, NUM_CLASSES
from mnistops.predictor import Predictor
from mnistops.serve.app import create_app

MODEL_NAME = "mnist-classifier"
SHARPNESS = 4.0


class MeanPixelPredictor(Predictor):
    """A predictor without onnxruntime: the digit is the mean pixel times 9, rounded.

    Its softmax peaks at ``9 * mean`` (all zeros -> 0, all ones -> 9), so a test picks
    the answer by the pixels it sends. It records the batch sizes it is called with.
    """

    def __init__(self, bundle: ModelBundle) -> None:
        super().__init__(bundle)
        self.calls: list[int] = []

    def load(self) -> None:
        """Nothing to load."""

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        batch = np.asarray(pixels, dtype=np.float32).reshape(-1, IMAGE_PIXELS)
        self.calls.append(len(batch))
        peak = 9.0 * batch.mean(axis=1, keepdims=True)
        logits = -SHARPNESS * (np.arange(NUM_CLASSES) - peak) ** 2
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return probabilities


def fake_loader(bundle: ModelBundle, settings: Settings) -> Predictor:
    """The :data:`mnistops.serve.models.Loader` the tests hand to create_app."""
    return MeanPixelPredictor(bundle)


def write_bundle(folder: Path, version: str = "1") -> ModelBundle:
    """A bundle folder as `mnistops export` lays it out; the ONNX file is a stand-in."""
    folder.mkdir(parents=True)
    (folder / ONNX_FILE).write_bytes(b"read by the fake predictor: never")
    rng = np.random.default_rng(0)
    ReferenceProfile(
        feature_names=FEATURE_NAMES,
        features=rng.random((20, len(FEATURE_NAMES))),
        probabilities=np.full((20, NUM_CLASSES), 1 / NUM_CLASSES),
        labels=np.arange(20) % NUM_CLASSES,
    ).save(folder / "reference.npz")
    write_metadata(folder, {"name": MODEL_NAME, "version": version})
    return load_bundle(folder)


T = TypeVar("T")


@dataclass
class RecordingMonitor:
    """A monitoring hook (``runtime.MonitorHook``) that keeps what it was told."""

    records: list[dict[str, object]] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    started: bool = False
    stopped: bool = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def set_model(self, bundle: ModelBundle) -> None:
        self.models.append(bundle.version)

    def record(
        self,
        *,
        request_ids: Sequence[str],
        pixels: np.ndarray,
        probabilities: np.ndarray,
        latency_s: float,
        model_version: str,
    ) -> None:
        self.records.append(
            {
                "request_ids": list(request_ids),
                "images": len(pixels),
                "digits": probabilities.argmax(axis=1).tolist(),
                "model_version": model_version,
            }
        )

    def render_metrics(self) -> bytes:
        return b"# recorded metrics\n"

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def bundle(tmp_path: Path) -> ModelBundle:
    return write_bundle(tmp_path / "model")


@pytest.fixture
def make_app(tmp_path: Path, bundle: ModelBundle) -> Callable[..., FastAPI]:
    """``make_app(**settings)``: the service on the fake predictor, monitoring off."""

    def make(**overrides: Any) -> FastAPI:
        values: dict[str, Any] = {
            "home": tmp_path / "home",
            "model_uri": str(bundle.path),
            "monitoring": False,
            "reload_interval_s": 0,
        }
        values.update(overrides)
        return create_app(Settings(**values), bundle, loader=fake_loader)

    return make


@pytest.fixture
def app(make_app: Callable[..., FastAPI]) -> FastAPI:
    return make_app()


async def started_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client on ``app`` with its lifespan run (ASGITransport does not run it)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async for started in started_client(app):
        yield started


def decode_threads(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """The thread of each image normalised from now on (to see what runs off the loop)."""
    threads: list[threading.Thread] = []
    normalise = imaging.normalise_image

    def spy(gray: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread())
        return normalise(gray)

    monkeypatch.setattr(imaging, "normalise_image", spy)
    return threads
