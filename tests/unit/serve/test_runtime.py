"""The request path's calls into monitoring, through the MonitorHook protocol."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI

from mnistops.bundle import ModelBundle
from mnistops.config import Settings
from mnistops.errors import ReloadError
from mnistops.serve.models import ModelSlot
from mnistops.serve.runtime import MonitorHook, Runtime, image_ids
from tests.unit.serve.conftest import (
    MeanPixelPredictor,
    RecordingMonitor,
    started_client,
    write_bundle,
)

pytestmark = [pytest.mark.unit, pytest.mark.anyio]


def test_a_lone_image_keeps_the_request_id_and_a_batch_numbers_its_images() -> None:
    assert image_ids("abc", 1) == ["abc"]
    assert image_ids("abc", 3) == ["abc-0", "abc-1", "abc-2"]


async def test_runtime_records_each_prediction_with_the_version_that_made_it(
    bundle: ModelBundle,
) -> None:
    monitor = RecordingMonitor()
    hook: MonitorHook = monitor  # the recording object satisfies the protocol
    settings = Settings(monitoring=False)
    runtime = Runtime(settings, ModelSlot(settings, MeanPixelPredictor(bundle)), hook)
    predictor, (probs, is_digit) = await runtime.predict(np.ones((2, 784), np.float32), "req")
    assert predictor.version == "1" and probs.shape == (2, 10) and is_digit.shape == (2,)
    assert monitor.records == [
        {"request_ids": ["req-0", "req-1"], "images": 2, "digits": [9, 9], "model_version": "1"}
    ]


async def test_the_app_starts_records_exposes_and_stops_its_monitor(app: FastAPI) -> None:
    monitor = RecordingMonitor()
    app.state.runtime.monitor = monitor
    async for client in started_client(app):
        assert monitor.started
        answer = (await client.post("/predict", json={"image": [0] * 784})).json()
        assert (await client.get("/metrics")).text == "# recorded metrics\n"
    assert monitor.stopped
    assert monitor.records == [
        {"request_ids": [answer["request_id"]], "images": 1, "digits": [0], "model_version": "1"}
    ]


def test_a_corrupt_version_found_on_reload_is_refused_and_the_old_one_serves_on(
    tmp_path: Path, bundle: ModelBundle
) -> None:
    broken = write_bundle(tmp_path / "v2", version="2")  # its model.onnx is no ONNX model
    settings = Settings(home=tmp_path / "home", model_uri=str(broken.path), monitoring=False)
    slot = ModelSlot(settings, MeanPixelPredictor(bundle))
    with pytest.raises(ReloadError) as refused:
        slot.reload()
    message = str(refused.value)
    assert message.startswith("version 2 was not swapped in (")
    assert message.endswith("still serving version 1") and "\n" not in message
    assert slot.current.version == "1"


def test_a_reload_that_finds_no_version_is_refused_as_a_conflict_and_the_old_one_serves_on(
    tmp_path: Path, bundle: ModelBundle
) -> None:
    # the configured folder is gone: the operator's state, not the client's request (a 409
    # with the version still served, not a 400)
    settings = Settings(home=tmp_path / "home", model_uri=str(tmp_path / "gone"), monitoring=False)
    slot = ModelSlot(settings, MeanPixelPredictor(bundle))
    with pytest.raises(ReloadError) as refused:
        slot.reload()
    assert refused.value.http_status == 409
    message = str(refused.value)
    assert message.endswith("; still serving version 1") and "\n" not in message
    assert str(tmp_path / "gone") in message
    assert slot.current.version == "1"


def test_polling_says_once_in_one_line_that_a_found_version_is_unusable(
    tmp_path: Path, bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    from mnistops import registry

    broken = write_bundle(tmp_path / "v2", version="2")
    settings = Settings(home=tmp_path / "home", model_uri=str(broken.path), monitoring=False)
    monkeypatch.setattr(registry, "current_version", lambda uri, settings: "2")
    slot = ModelSlot(settings, MeanPixelPredictor(bundle))
    with caplog.at_level(logging.WARNING, logger="mnistops.serve"):
        for _ in range(3):
            slot._poll_once()
    said = [r for r in caplog.records if "not swapped in" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None
    assert slot.current.version == "1"
