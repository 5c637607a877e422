"""POST /predict in process: JSON pixels, batches, image uploads, and every refusal."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable

import anyio
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image, ImageDraw

from tests.unit.serve.conftest import MODEL_NAME, decode_threads, started_client

pytestmark = [pytest.mark.unit, pytest.mark.anyio]


def _png(value: int, size: int = 28) -> bytes:
    """A light digit-like square on black (MNIST's ink on background)."""
    picture = np.zeros((size, size), np.uint8)
    picture[size // 4 : 3 * size // 4, size // 3 : 2 * size // 3] = value
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    return buffer.getvalue()


async def test_predict_labels_json_pixels(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", json={"image": [[1.0] * 28] * 28})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["digit"] == 9 and body["confidence"] > 0.9
    assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-3
    assert body["model_name"] == MODEL_NAME and body["model_version"] == "1"
    assert "predictions" not in body


async def test_predict_reads_byte_scale_and_explicit_scales(client: httpx.AsyncClient) -> None:
    as_bytes = await client.post("/predict", json={"image": [255] * 784})
    unit = await client.post("/predict", json={"image": [1] * 784, "scale": "unit"})
    byte = await client.post("/predict", json={"image": [1] * 784, "scale": "byte"})
    assert as_bytes.json()["digit"] == 9 and unit.json()["digit"] == 9
    assert byte.json()["digit"] == 0


async def test_predict_answers_a_batch_image_by_image(client: httpx.AsyncClient) -> None:
    images = [[0.0] * 784, [1.0] * 784, [5 / 9] * 784]
    body = (await client.post("/predict", json={"images": images})).json()
    assert [p["digit"] for p in body["predictions"]] == [0, 9, 5]
    assert body["digit"] == 0


@pytest.mark.parametrize("upload", ["multipart", "raw"])
async def test_predict_labels_an_uploaded_png(client: httpx.AsyncClient, upload: str) -> None:
    if upload == "multipart":
        files = {"file": ("digit.png", _png(255), "image/png")}
        response = await client.post("/predict", files=files)
    else:
        headers = {"content-type": "image/png"}
        response = await client.post("/predict", content=_png(255, 300), headers=headers)
    assert response.status_code == 200, response.text
    assert 0 <= response.json()["digit"] <= 9


REFUSALS = [
    ("empty body", b"", "application/json", 400, 'send JSON {"image"'),
    ("invalid JSON", b'{"image": [1, 2', "application/json", 400, "JSON has no NaN"),
    ("not an object", b"[1, 2, 3]", "application/json", 400, 'exactly one of "image"'),
    ("both keys", b'{"image": [0], "images": [[0]]}', "application/json", 400, "exactly one"),
    ("783 values", json.dumps({"image": [0.5] * 783}), "application/json", 400, "784 values"),
    ("27x28", json.dumps({"image": [[0] * 28] * 27}), "application/json", 400, "got 27x28"),
    (
        "two as image",
        json.dumps({"image": [[0] * 784] * 2}),
        "application/json",
        400,
        'as "images"',
    ),
    ("strings", json.dumps({"image": ["a"] * 784}), "application/json", 400, "must be numbers"),
    (
        "numbers as strings",
        json.dumps({"image": ["1"] * 784}),
        "application/json",
        400,
        "strings, booleans and null are not numbers",
    ),
    (
        "a boolean among numbers",
        json.dumps({"images": [[0.5] * 784, [True] + [0.5] * 783]}),
        "application/json",
        400,
        "strings, booleans and null are not numbers",
    ),
    ("a null", json.dumps({"image": [None] * 784}), "application/json", 400, "null are not"),
    ("NaN", b'{"image": [' + b"NaN," * 783 + b"1]}", "application/json", 400, "NaN"),
    ("negative", json.dumps({"image": [-1] * 784}), "application/json", 400, "integers 0-255"),
    ("over 255", json.dumps({"image": [256] * 784}), "application/json", 400, "integers 0-255"),
    (
        "bad scale",
        json.dumps({"image": [0] * 784, "scale": "x"}),
        "application/json",
        400,
        'be "unit"',
    ),
    ("empty batch", json.dumps({"images": []}), "application/json", 400, "non-empty list"),
    ("batch of 4", json.dumps({"images": [[0] * 784] * 4}), "application/json", 413, "limit of 3"),
    ("text", b"hello", "text/plain", 415, "send application/json, multipart/form-data"),
    ("corrupt png", b"\x89PNG\r\n\x1a\nnot really", "image/png", 400, "PNG or JPEG"),
    (
        "not an image",
        b"GIF89a...",
        "image/png",
        400,
        "not a readable PNG or JPEG image (cannot identify image file)",
    ),
    ("empty png", b"", "image/png", 400, "send PNG or JPEG bytes"),
]


@pytest.mark.parametrize(("case", "body", "content_type", "status", "says"), REFUSALS)
async def test_predict_refuses_bad_input_saying_what_is_accepted(
    make_app: Callable[..., FastAPI],
    case: str,
    body: bytes | str,
    content_type: str,
    status: int,
    says: str,
) -> None:
    async for client in started_client(make_app(max_batch_images=3)):
        response = await client.post(
            "/predict", content=body, headers={"content-type": content_type}
        )
        assert response.status_code == status, (case, response.text)
        assert says in response.json()["error"], (case, response.text)


async def test_predict_refuses_a_multipart_body_without_a_file_field(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/predict", data={"image": "0"}, files={"other": b"x"})
    assert response.status_code == 400
    assert "file field named 'file'" in response.json()["error"]


async def test_predict_refuses_a_body_over_the_limit(make_app: Callable[..., FastAPI]) -> None:
    async for client in started_client(make_app(max_body_bytes=1000)):
        big = json.dumps({"image": [0] * 784})
        response = await client.post("/predict", content=big)
        assert response.status_code == 413
        assert "at most 1000 bytes are accepted" in response.json()["error"]


async def test_predict_refuses_an_image_over_the_pixel_limit(
    make_app: Callable[..., FastAPI],
) -> None:
    async for client in started_client(make_app(max_image_pixels=100)):
        response = await client.post(
            "/predict", content=_png(255), headers={"content-type": "image/png"}
        )
        assert response.status_code == 413 and "at most 100" in response.json()["error"]


async def test_concurrent_requests_are_answered_in_calls_within_the_batch_limit(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app(batch_max_size=4)

    async def one(client: httpx.AsyncClient) -> None:
        response = await client.post("/predict", json={"images": [[0] * 784] * 3})
        assert response.status_code == 200 and len(response.json()["predictions"]) == 3

    async for client in started_client(app):
        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(one, client)
    calls = app.state.runtime.slot.current.calls
    assert sum(calls) == 30 and max(calls) <= 4, calls


async def test_an_error_message_carries_no_python_object_reprs(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "image/jpeg"}
    response = await client.post("/predict", content=b"not a jpeg", headers=headers)
    assert response.status_code == 400
    assert "object at 0x" not in response.json()["error"]


@pytest.mark.parametrize("upload", ["multipart", "raw"])
async def test_a_large_upload_is_decoded_off_the_event_loop_a_small_one_inline(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, upload: str
) -> None:
    threads = decode_threads(monkeypatch)
    for size in (28, 600):  # 784 pixels, then 360,000: over the inline limit
        if upload == "multipart":
            files = {"file": ("digit.png", _png(255, size), "image/png")}
            response = await client.post("/predict", files=files)
        else:
            headers = {"content-type": "image/png"}
            response = await client.post("/predict", content=_png(255, size), headers=headers)
        assert response.status_code == 200, response.text
    assert threads[0] is threading.current_thread()
    assert threads[1] is not threading.current_thread()


async def test_a_tiny_png_of_a_huge_image_is_refused_413_without_decoding(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = decode_threads(monkeypatch)
    buffer = io.BytesIO()
    Image.new("1", (6300, 6300)).save(buffer, "PNG")  # 5 KB, 40 million pixels
    headers = {"content-type": "image/png"}
    response = await client.post("/predict", content=buffer.getvalue(), headers=headers)
    assert response.status_code == 413, response.text
    assert "6300x6300 = 39690000 pixels; at most 4194304" in response.json()["error"]
    assert threads == []


async def test_a_phone_photo_jpeg_is_accepted(client: httpx.AsyncClient) -> None:
    photo = Image.new("RGB", (4000, 3000), (200, 200, 190))
    ImageDraw.Draw(photo).line([(2000, 600), (2000, 2400)], fill=(40, 40, 60), width=200)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=85)  # 12 million pixels, decoded at 1/4 scale
    headers = {"content-type": "image/jpeg"}
    response = await client.post("/predict", content=buffer.getvalue(), headers=headers)
    assert response.status_code == 200, response.text
