"""MLflow's scoring protocol in process: /invocations in every input format, the answer's
shape, the shared predict path, every refusal, and /ping, /health, /version."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from mnistops import __version__
from tests.unit.serve.conftest import RecordingMonitor, started_client

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

DIGITS = [0, 9, 5]
"""The fake predictor's answers for images of mean 0, 1 and 5/9."""
IMAGES = np.array([[0.0] * 784, [1.0] * 784, [5 / 9] * 784])
COLUMNS = [f"pixel_{i}" for i in range(784)]
JSON_TYPE = {"content-type": "application/json"}


def _records(rows: list[list[Any]], columns: list[str]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in rows]


BODIES: dict[str, dict[str, Any]] = {
    "inputs": {"inputs": IMAGES.tolist()},
    "inputs 28x28": {"inputs": IMAGES.reshape(3, 28, 28).tolist()},
    "instances": {"instances": IMAGES.tolist()},
    "instances with params": {"instances": IMAGES.tolist(), "params": {"ignored": 1}},
    "dataframe_split": {"dataframe_split": {"columns": COLUMNS, "data": IMAGES.tolist()}},
    "dataframe_split with index": {
        "dataframe_split": {"index": [7, 8, 9], "columns": COLUMNS, "data": IMAGES.tolist()}
    },
    "dataframe_split without columns": {"dataframe_split": {"data": IMAGES.tolist()}},
    "dataframe_split of one column": {
        "dataframe_split": {"columns": ["pixels"], "data": [[row] for row in IMAGES.tolist()]}
    },
    "dataframe_records": {"dataframe_records": _records(IMAGES.tolist(), COLUMNS)},
    "dataframe_records of one column": {
        "dataframe_records": [{"pixels": row} for row in IMAGES.tolist()]
    },
}


def _probabilities(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["predictions"]
    assert list(body["predictions"]) == ["probabilities", "is_digit"]
    assert len(body["predictions"]["is_digit"]) == len(body["predictions"]["probabilities"])
    return np.array(body["predictions"]["probabilities"])


@pytest.mark.parametrize("case", list(BODIES))
async def test_invocations_answers_every_mlflow_input_format(
    client: httpx.AsyncClient, case: str
) -> None:
    probs = _probabilities(await client.post("/invocations", json=BODIES[case]))
    assert probs.shape == (3, 10) and probs.argmax(axis=1).tolist() == DIGITS, case
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)


async def test_records_are_lined_up_by_column_name_as_pandas_does(
    client: httpx.AsyncClient,
) -> None:
    rows = [[0.0] * 783 + [1.0], [1.0] + [0.0] * 783]
    in_order = _records(rows, COLUMNS)
    second_reversed = [in_order[0], dict(reversed(list(in_order[1].items())))]
    sent = {"dataframe_records": second_reversed}
    as_split = {"dataframe_split": {"columns": COLUMNS, "data": rows}}
    answer = _probabilities(await client.post("/invocations", json=sent))
    assert np.array_equal(answer, _probabilities(await client.post("/invocations", json=as_split)))


async def test_invocations_answers_what_predict_answers(client: httpx.AsyncClient) -> None:
    pixels = np.random.default_rng(3).random((4, 784))
    predicted = (await client.post("/predict", json={"images": pixels.tolist()})).json()
    wanted = np.array([p["probabilities"] for p in predicted["predictions"]])
    answer = _probabilities(await client.post("/invocations", json={"inputs": pixels.tolist()}))
    assert np.allclose(answer, wanted, atol=1e-6)


async def test_invocations_goes_through_batching_and_monitoring(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app(batch_max_size=2)
    monitor = RecordingMonitor()
    app.state.runtime.monitor = monitor
    async for client in started_client(app):
        response = await client.post("/invocations", json={"inputs": IMAGES.tolist()})
    request_id = response.headers["x-request-id"]
    assert monitor.records == [
        {
            "request_ids": [f"{request_id}-{i}" for i in range(3)],
            "images": 3,
            "digits": DIGITS,
            "model_version": "1",
        }
    ]
    assert max(app.state.runtime.slot.current.calls) <= 2


@pytest.mark.parametrize("content_type", ["application/json; charset=UTF-8", None])
async def test_invocations_takes_utf8_json_and_a_body_without_a_type(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps({"inputs": [[0.0] * 784]}).encode()
    request = client.build_request("POST", "/invocations", content=body, headers=headers)
    assert request.headers.get("content-type") == content_type
    probs = _probabilities(await client.send(request))
    assert probs.argmax(axis=1).tolist() == [0]


REFUSALS: list[tuple[str, bytes | str, str, int, str]] = [
    ("empty body", b"", "application/json", 400, "empty body"),
    ("invalid JSON", b'{"inputs": [1, 2', "application/json", 400, "invalid JSON"),
    ("a list", b"[[0.5]]", "application/json", 400, "must be a JSON object"),
    ("no field", json.dumps({"data": [[0] * 784]}), "application/json", 400, "none (keys: data)"),
    (
        "two fields",
        json.dumps({"inputs": [[0] * 784], "instances": [[0] * 784]}),
        "application/json",
        400,
        "got inputs, instances",
    ),
    (
        "named inputs",
        json.dumps({"inputs": {"pixels": [[0] * 784]}}),
        "application/json",
        400,
        "unnamed input",
    ),
    (
        "instances of named inputs",
        json.dumps({"instances": [{"pixels": [0] * 784}]}),
        "application/json",
        400,
        "unnamed input",
    ),
    ("no images", json.dumps({"inputs": []}), "application/json", 400, "no images"),
    (
        "one flat image",
        json.dumps({"inputs": [0] * 784}),
        "application/json",
        400,
        "got a flat list of 784 values",
    ),
    (
        "783 values",
        json.dumps({"inputs": [[0] * 783]}),
        "application/json",
        400,
        "[1, 784] or [1, 28, 28]",
    ),
    (
        "ragged",
        json.dumps({"instances": [[0] * 784, [0] * 3]}),
        "application/json",
        400,
        "the same shape",
    ),
    ("strings", json.dumps({"inputs": [["a"] * 784]}), "application/json", 400, "lists of numbers"),
    (
        "nulls",
        json.dumps({"inputs": [[None] * 784]}),
        "application/json",
        400,
        "strings, booleans and null are not numbers",
    ),
    (
        "numbers as strings",
        json.dumps({"inputs": [["0.5"] * 784]}),
        "application/json",
        400,
        "strings, booleans and null are not numbers",
    ),
    (
        "a boolean among numbers",
        json.dumps({"inputs": [[True] + [0.5] * 783]}),
        "application/json",
        400,
        "strings, booleans and null are not numbers",
    ),
    (
        "0-255",
        json.dumps({"inputs": [[255] * 784]}),
        "application/json",
        400,
        "divide 0-255 values by 255",
    ),
    ("negative", json.dumps({"inputs": [[-0.5] * 784]}), "application/json", 400, "in [0, 1]"),
    (
        "over the batch limit",
        json.dumps({"inputs": [[0] * 784] * 4}),
        "application/json",
        413,
        "limit of 3",
    ),
    (
        "split without data",
        json.dumps({"dataframe_split": {"columns": COLUMNS}}),
        "application/json",
        400,
        '"data": [[...], ...]}',
    ),
    (
        "split with another key",
        json.dumps({"dataframe_split": {"data": [[0] * 784], "dtypes": {}}}),
        "application/json",
        400,
        "no other keys",
    ),
    (
        "split of 783 columns",
        json.dumps({"dataframe_split": {"columns": COLUMNS[:-1], "data": [[0] * 784]}}),
        "application/json",
        400,
        "names 783 columns",
    ),
    (
        "split of 783 values",
        json.dumps({"dataframe_split": {"data": [[0] * 783]}}),
        "application/json",
        400,
        "[1, 784] or [1, 1, 784]",
    ),
    (
        "records with a missing column",
        json.dumps(
            {
                "dataframe_records": _records([[0] * 784], COLUMNS)
                + _records([[0] * 783], COLUMNS[:-1])
            }
        ),
        "application/json",
        400,
        "record 1 has other columns",
    ),
    (
        "records not a list",
        json.dumps({"dataframe_records": {"pixel_0": 0}}),
        "application/json",
        400,
        "list of records",
    ),
    (
        "CSV",
        ",".join(COLUMNS) + "\n" + ",".join(["0"] * 784),
        "text/csv",
        415,
        "need a model with named columns",
    ),
    ("Parquet", b"PAR1", "application/vnd.apache.parquet", 415, "send application/json"),
    (
        "latin-1",
        json.dumps({"inputs": [[0] * 784]}),
        "application/json; charset=latin-1",
        415,
        "only charset=utf-8",
    ),
    (
        "other parameter",
        json.dumps({"inputs": [[0] * 784]}),
        "application/json; format=pandas-split",
        415,
        "'format=pandas-split'",
    ),
]


@pytest.mark.parametrize(("case", "body", "content_type", "status", "says"), REFUSALS)
async def test_invocations_refuses_bad_input_as_mlflow_does_saying_what_is_accepted(
    make_app: Callable[..., FastAPI],
    case: str,
    body: bytes | str,
    content_type: str,
    status: int,
    says: str,
) -> None:
    async for client in started_client(make_app(max_batch_images=3)):
        headers = {"content-type": content_type}
        response = await client.post("/invocations", content=body, headers=headers)
        assert response.status_code == status, (case, response.text)
        refusal = response.json()
        assert says in refusal["message"], (case, refusal["message"])
        assert refusal["error"] == refusal["message"]
        wanted_code = "RESOURCE_LIMIT_EXCEEDED" if status == 413 else "BAD_REQUEST"
        assert refusal["error_code"] == wanted_code
        assert (await client.get("/ping")).status_code == 200


async def test_invocations_refuses_a_body_over_the_byte_limit(
    make_app: Callable[..., FastAPI],
) -> None:
    async for client in started_client(make_app(max_body_bytes=1000)):
        big = json.dumps({"inputs": [[0] * 784]})
        response = await client.post("/invocations", content=big, headers=JSON_TYPE)
        assert response.status_code == 413
        assert "at most 1000 bytes are accepted" in response.json()["error"]


@pytest.mark.parametrize("path", ["/ping", "/health"])
async def test_ping_and_health_answer_as_mlflow_does(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200 and response.content == b"\n"
    assert response.headers["content-type"] == "application/json"


async def test_ping_says_not_ready_before_the_service_has_started(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)  # no lifespan: the runtime never started
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/ping")
    assert response.status_code == 503 and "not ready" in response.json()["error"]


async def test_version_answers_the_server_version_as_bare_text(client: httpx.AsyncClient) -> None:
    response = await client.get("/version")
    assert response.status_code == 200 and response.text == __version__
