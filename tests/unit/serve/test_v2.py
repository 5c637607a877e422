"""The Open Inference Protocol in process: health, metadata, infer and its refusals."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.unit.serve.conftest import MODEL_NAME

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

INFER = f"/v2/models/{MODEL_NAME}/infer"


def _tensor(**changes: Any) -> dict[str, Any]:
    tensor = {"name": "pixels", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}
    return {**tensor, **changes}


async def test_infer_labels_a_uint8_batch_of_28x28_images(client: httpx.AsyncClient) -> None:
    images = [[[0] * 28] * 28, [[255] * 28] * 28]
    request = {"inputs": [_tensor(shape=[2, 28, 28], data=images)]}
    response = await client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    probabilities, label = body["outputs"]
    assert probabilities["shape"] == [2, 10] and len(probabilities["data"]) == 20
    assert label == {"name": "label", "shape": [2], "datatype": "INT64", "data": [0, 9]}
    assert body["model_name"] == MODEL_NAME and body["model_version"] == "1"


async def test_infer_takes_flat_fp32_and_echoes_the_request_id(
    client: httpx.AsyncClient,
) -> None:
    request = {"id": "abc", "inputs": [_tensor(datatype="FP32", data=[1.0] * 784)]}
    response = await client.post(f"/v2/models/{MODEL_NAME}/versions/1/infer", json=request)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "abc" and response.headers["x-request-id"] == "abc"
    assert response.json()["outputs"][1]["data"] == [9]


BAD_TENSORS = [
    (_tensor(datatype="INT8"), "datatype must be UINT8 (0-255) or FP32"),
    (_tensor(shape=[1, 783]), "shape must be [N, 784] or [N, 28, 28]"),
    (_tensor(shape="1x784"), "shape must be"),
    (_tensor(shape=[0, 784], data=[]), "shape[0] (images) must be 1..256"),
    (_tensor(data=[0] * 10), "shape [1, 784] needs 784"),
    (_tensor(data=["a"] * 784), "data must be a flat or nested list of numbers"),
    (_tensor(data=[300] * 784), "UINT8 values must be finite and within [0, 255]"),
    (_tensor(data=[0.5] * 784), "UINT8 values must be integers 0-255"),
    (_tensor(datatype="FP32", data=[2.0] * 784), "FP32 values must be finite and within [0, 1]"),
]


@pytest.mark.parametrize(("tensor", "says"), BAD_TENSORS)
async def test_infer_refuses_a_bad_tensor_saying_what_is_accepted(
    client: httpx.AsyncClient, tensor: dict[str, Any], says: str
) -> None:
    response = await client.post(INFER, json={"inputs": [tensor]})
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{", "invalid JSON"),
        (b"[]", 'send {"inputs"'),
        (b'{"inputs": [{}, {}]}', "exactly one input tensor"),
    ],
)
async def test_infer_refuses_a_body_that_is_not_one_tensor(
    client: httpx.AsyncClient, body: bytes, says: str
) -> None:
    response = await client.post(INFER, content=body)
    assert response.status_code == 400 and says in response.json()["error"]


async def test_unknown_model_or_version_is_404_naming_what_is_served(
    client: httpx.AsyncClient,
) -> None:
    unknown = await client.post("/v2/models/resnet/infer", json={"inputs": [_tensor()]})
    assert unknown.status_code == 404
    assert f"this server serves {MODEL_NAME!r}" in unknown.json()["error"]
    version = await client.get(f"/v2/models/{MODEL_NAME}/versions/7")
    assert version.status_code == 404 and "serving version 1" in version.json()["error"]


async def test_health_and_metadata_describe_the_served_model(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get("/v2")).json()["name"] == "mnistops"
    meta = (await client.get(f"/v2/models/{MODEL_NAME}")).json()
    assert meta["versions"] == ["1"] and meta["inputs"][0]["shape"] == [-1, 784]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "label"]
    ready = await client.get(f"/v2/models/{MODEL_NAME}/versions/1/ready")
    assert ready.json() == {"name": MODEL_NAME, "ready": True}
