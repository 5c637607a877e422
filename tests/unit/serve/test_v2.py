"""The Open Inference Protocol in process: health, metadata, infer in JSON and binary
(Triton's binary tensor data extension), encoded images, and the refusals of each."""

from __future__ import annotations

import base64
import io
import re
import threading
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mnistops.config import Settings
from mnistops.ids import ISSUED
from mnistops.imaging import InputError
from mnistops.serve import schemas
from mnistops.serve.inputs import infer_request
from mnistops.serve.tensors import DATATYPE_TOP, DTYPES, INPUT_NAME
from mnistops.serve.v2 import OUTPUT_DTYPES
from tests.unit.serve.conftest import MODEL_NAME, RecordingMonitor, decode_threads, started_client

pytestmark = [pytest.mark.unit, pytest.mark.anyio]

INFER = f"/v2/models/{MODEL_NAME}/infer"
HEADER = "Inference-Header-Content-Length"
SAFE_TOKEN = re.compile(r"[0-9A-Za-z._:+=@~-]{1,64}")


def _tensor(**changes: Any) -> dict[str, Any]:
    tensor = {"name": "pixels", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}
    return {**tensor, **changes}


def _binary(
    array: np.ndarray, datatype: str, shape: list[int] | None = None, **request: Any
) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body: the JSON header, then the array's bytes."""
    raw = array.astype(DTYPES[datatype]).tobytes() if datatype in DTYPES else array.tobytes()
    tensor = {"name": "pixels", "shape": shape or [len(array), 784], "datatype": datatype}
    header = orjson.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}], **request}
    )
    return header + raw, {HEADER: str(len(header))}


def _binary_outputs(response: httpx.Response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header of a binary answer, and its binary outputs as arrays."""
    length = int(response.headers[HEADER])
    header = orjson.loads(response.content[:length])
    arrays, offset = {}, length
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            data = response.content[offset : offset + size]
            arrays[output["name"]] = np.frombuffer(data, OUTPUT_DTYPES[output["datatype"]])
            offset += size
    assert offset == len(response.content)
    return header, arrays


def _png(value: int, stroke: bool = True) -> bytes:
    """A 40x40 greyscale PNG: dark background, a light vertical stroke (or blank)."""
    pixels = np.full((40, 40), value, dtype=np.uint8)
    if stroke:
        pixels[8:32, 17:23] = 255 - value
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


async def test_infer_labels_a_uint8_batch_of_28x28_images(client: httpx.AsyncClient) -> None:
    images = [[[0] * 28] * 28, [[255] * 28] * 28]
    request = {"inputs": [_tensor(shape=[2, 28, 28], data=images)]}
    response = await client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    body = response.json()
    probabilities, label, is_digit = body["outputs"]
    assert probabilities["shape"] == [2, 10] and len(probabilities["data"]) == 20
    assert label == {"name": "label", "shape": [2], "datatype": "INT64", "data": [0, 9]}
    assert is_digit["datatype"] == "BOOL" and is_digit["shape"] == [2]
    assert all(isinstance(v, bool) for v in is_digit["data"])
    assert body["model_name"] == MODEL_NAME and body["model_version"] == "1"


@pytest.mark.parametrize("datatype", sorted(DTYPES))
async def test_every_numeric_datatype_is_read_on_its_scale_in_json_and_binary(
    client: httpx.AsyncClient, datatype: str
) -> None:
    top = DATATYPE_TOP[datatype]  # integers are 0-255, floats [0, 1]
    full = top if DTYPES[datatype].kind != "i" else min(top, np.iinfo(DTYPES[datatype]).max)
    values = [0.0, full, top / 3 if top == 1 else 85.0]
    pixels = np.repeat(np.array(values)[:, None], 784, axis=1)
    as_json = {"inputs": [_tensor(datatype=datatype, shape=[3, 784], data=pixels.tolist())]}
    body, headers = _binary(pixels, datatype)
    for response in (
        await client.post(INFER, json=as_json),
        await client.post(INFER, content=body, headers=headers),
    ):
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][1]["data"] == [round(9 * v / top) for v in values]


async def test_v2_and_predict_give_the_same_probabilities_for_the_same_digit(
    client: httpx.AsyncClient,
) -> None:
    image = np.random.default_rng(0).integers(0, 256, 784)
    expected = (await client.post("/predict", json={"image": image.tolist()})).json()
    bodies = [_binary(image[None], t) for t in ("UINT8", "INT64")]
    bodies.append(_binary(image[None] / 255.0, "FP64"))
    for body, headers in bodies:
        answer = (await client.post(INFER, content=body, headers=headers)).json()
        probabilities = answer["outputs"][0]["data"]
        assert probabilities == pytest.approx(expected["probabilities"], abs=1e-6)


async def test_binary_outputs_come_after_the_json_header_when_asked(
    client: httpx.AsyncClient,
) -> None:
    pixels = np.array([[0] * 784, [255] * 784])
    body, headers = _binary(pixels, "UINT8", parameters={"binary_data_output": True})
    response = await client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    header, arrays = _binary_outputs(response)
    assert [o["name"] for o in header["outputs"]] == ["probabilities", "label", "is_digit"]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 2 * 10 * 4}
    assert arrays["label"].tolist() == [0, 9] and arrays["probabilities"].shape == (20,)
    assert response.headers["content-type"] == "application/octet-stream"


async def test_outputs_are_the_ones_asked_for_each_binary_or_not(
    client: httpx.AsyncClient,
) -> None:
    outputs = [{"name": "label", "parameters": {"binary_data": True}}, {"name": "probabilities"}]
    request = {"inputs": [_tensor(data=[255] * 784)], "outputs": outputs}
    header, arrays = _binary_outputs(await client.post(INFER, json=request))
    assert [o["name"] for o in header["outputs"]] == ["label", "probabilities"]
    assert arrays["label"].tolist() == [9] and len(header["outputs"][1]["data"]) == 10
    only = {"inputs": [_tensor()], "outputs": [{"name": "label"}]}
    answer = (await client.post(INFER, json=only)).json()
    assert answer["outputs"] == [{"name": "label", "shape": [1], "datatype": "INT64", "data": [0]}]


async def test_a_raw_binary_request_is_one_fp32_image_answered_in_binary(
    client: httpx.AsyncClient,
) -> None:
    raw = np.ones(784, dtype="<f4").tobytes()
    response = await client.post(INFER, content=raw, headers={HEADER: "0"})
    assert response.status_code == 200, response.text
    assert _binary_outputs(response)[1]["label"].tolist() == [9]
    short = await client.post(INFER, content=raw[:-4], headers={HEADER: "0"})
    assert short.status_code == 400 and "3136 bytes, got 3132" in short.json()["error"]


async def test_png_files_in_a_bytes_tensor_go_through_the_image_pipeline(
    client: httpx.AsyncClient,
) -> None:
    files = [_png(0), _png(255), _png(0, stroke=False)]
    expected = []
    for data in files:
        answer = await client.post("/predict", content=data, headers={"content-type": "image/png"})
        expected.append(answer.json()["probabilities"])
    as_json = {
        "inputs": [
            {
                "name": "pixels",
                "shape": [3],
                "datatype": "BYTES",
                "data": [base64.b64encode(f).decode() for f in files],
            }
        ]
    }
    elements = b"".join(len(f).to_bytes(4, "little") + f for f in files)
    body, headers = _binary(np.frombuffer(elements, np.uint8), "BYTES", shape=[3, 1])
    for response in (
        await client.post(INFER, json=as_json),
        await client.post(INFER, content=body, headers=headers),
    ):
        assert response.status_code == 200, response.text
        probabilities = np.array(response.json()["outputs"][0]["data"]).reshape(3, 10)
        assert probabilities == pytest.approx(np.array(expected), abs=1e-6)


async def test_the_images_of_one_request_share_one_upload_s_pixel_cap(
    make_app: Callable[..., FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = decode_threads(monkeypatch)
    files = [base64.b64encode(_png(0)).decode()] * 2  # 40x40 = 1,600 pixels each
    request = {"inputs": [{"name": "pixels", "shape": [2], "datatype": "BYTES", "data": files}]}
    async for client in started_client(make_app(max_image_pixels=3000)):
        response = await client.post(INFER, json=request)
        assert response.status_code == 413, response.text
        assert "images 0-1 of 2 decode to 3200 pixels" in response.json()["error"]
        assert "may decode to 3000 in all" in response.json()["error"]
        assert decoded == []  # every header is read before any image is decoded
        small = Image.fromarray(np.zeros((20, 20), np.uint8))  # 400 pixels: it fits beside
        buffer = io.BytesIO()
        small.save(buffer, "PNG")
        request["inputs"][0]["data"] = [files[0], base64.b64encode(buffer.getvalue()).decode()]
        assert (await client.post(INFER, json=request)).status_code == 200


async def test_encoded_images_are_decoded_off_the_event_loop(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = decode_threads(monkeypatch)
    files = [base64.b64encode(_png(0)).decode()] * 3
    request = {"inputs": [{"name": "pixels", "shape": [3], "datatype": "BYTES", "data": files}]}
    response = await client.post(INFER, json=request)
    assert response.status_code == 200, response.text
    assert len(decoded) == 3 and threading.current_thread() not in decoded


async def test_the_id_is_echoed_as_sent_and_the_log_key_is_always_the_servers(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    app.state.runtime.monitor = monitor = RecordingMonitor()
    sent_ids = ("abc-1", "0" * 32, "数字 ٣", "a\r\nX-Injected: 1", "é" * 10, "x" * 65, "")
    headers = set()
    for sent in sent_ids:
        response = await client.post(INFER, json={"id": sent, "inputs": [_tensor()]})
        assert response.status_code == 200, response.text
        assert response.json()["id"] == sent
        header = response.headers["x-request-id"]
        assert ISSUED.fullmatch(header) and header != sent  # a client never picks the key
        assert response.json()["parameters"] == {"request_id": header}
        assert monitor.records[-1]["request_ids"] == [header]
        headers.add(header)
    assert len(headers) == len(sent_ids)
    generated = await client.post(INFER, json={"inputs": [_tensor()]})
    assert generated.json()["id"] == generated.headers["x-request-id"]


async def test_parameters_are_accepted_and_unknown_ones_ignored(client: httpx.AsyncClient) -> None:
    request = {
        "parameters": {"priority": 1, "timeout": 100, "custom": "anything"},
        "inputs": [_tensor(parameters={"note": True})],
        "outputs": [{"name": "label", "parameters": {"binary_data": False, "x": 1}}],
    }
    response = await client.post(INFER, json=request)
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [0]


BAD_TENSORS = [
    (_tensor(datatype="BOOL"), "datatype must be FP64, FP32, FP16"),
    (_tensor(datatype="BF16"), "or BYTES (PNG/JPEG), got 'BF16'"),
    (_tensor(shape=[1, 783]), "shape must be [N, 784] or [N, 28, 28]"),
    (_tensor(shape="1x784"), "shape must be a list of non-negative integers"),
    (_tensor(shape=[True, 784]), "shape must be a list of non-negative integers, got [True"),
    (_tensor(shape=[-1, 784]), "non-negative integers"),
    (_tensor(shape=[1.0, 784]), "non-negative integers"),
    (_tensor(shape=[]), "non-negative integers"),
    (_tensor(shape=[2**63 - 1, 784]), "shape[0] (images) must be 1..256"),
    (_tensor(shape=[2**40, 2**40]), "shape must be [N, 784]"),
    (_tensor(shape=[0, 784], data=[]), "shape[0] (images) must be 1..256"),
    (_tensor(data=[0] * 10), "data has 10 values; shape [1, 784] needs 784"),
    (_tensor(data=["a"] * 784), "data must be a flat or nested list of numbers"),
    (_tensor(data=["1"] * 784), "strings, booleans and null are not numbers"),
    (_tensor(data=[True] * 784), "strings, booleans and null are not numbers"),
    (_tensor(data=[True] + [0] * 783), "strings, booleans and null are not numbers"),
    (_tensor(datatype="FP32", data=["0.5"] * 784), "strings, booleans and null are not numbers"),
    (_tensor(datatype="FP32", data=[False] + [0.5] * 783), "booleans and null are not numbers"),
    (_tensor(datatype="FP32", data=[None] * 784), "strings, booleans and null are not numbers"),
    (_tensor(data=[[0] * 784, [0]]), "data must be a flat or nested list of numbers"),
    (_tensor(data=None), "needs data, or binary_data_size"),
    (_tensor(data=[300] * 784), "UINT8 values must be finite and within [0, 255]"),
    (_tensor(data=[0.5] * 784), "UINT8 values must be integers 0-255"),
    (_tensor(datatype="INT8", data=[-1] * 784), "INT8 values must be finite and within"),
    (_tensor(datatype="FP32", data=[2.0] * 784), "FP32 values must be finite and within [0, 1]"),
    (_tensor(name="input0"), "unknown input 'input0': send 'pixels'"),
    (_tensor(parameters=[1]), "\"parameters\" of the input 'pixels' must be an object"),
    (_tensor(parameters={"shared_memory_region": "r"}), "shared memory is not supported"),
    (_tensor(shape=[1, 2], datatype="BYTES", data=["x"]), "BYTES images must be [N] or [N, 1]"),
    (_tensor(shape=[1], datatype="BYTES", data=[1]), "1 base64 strings of PNG/JPEG files"),
    (_tensor(shape=[1], datatype="BYTES", data=["%%"]), "must be base64"),
    (_tensor(shape=[1], datatype="BYTES", data=["aGk="]), "image 0: not a readable PNG"),
]


@pytest.mark.parametrize(("tensor", "says"), BAD_TENSORS)
async def test_infer_refuses_a_bad_tensor_saying_what_is_accepted(
    client: httpx.AsyncClient, tensor: dict[str, Any], says: str
) -> None:
    response = await client.post(INFER, json={"inputs": [tensor]})
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]


BAD_REQUESTS = [
    ({"id": 7}, '"id" must be a string, got 7'),
    ({"parameters": "x"}, '"parameters" of the request must be an object'),
    ({"parameters": {"binary_data_output": 1}}, "'binary_data_output' must be true or false"),
    ({"outputs": "label"}, '"outputs" must be a list of {"name"'),
    ({"outputs": [{"name": "logits"}]}, "unknown output 'logits': the outputs are "),
    ({"outputs": [{"name": "label", "parameters": {"classification": 3}}]}, "not supported"),
]


@pytest.mark.parametrize(("extra", "says"), BAD_REQUESTS)
async def test_infer_refuses_bad_ids_parameters_and_outputs(
    client: httpx.AsyncClient, extra: dict[str, Any], says: str
) -> None:
    response = await client.post(INFER, json={"inputs": [_tensor()], **extra})
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]


def _framed(
    header: dict[str, Any], raw: bytes, length: int | str | None = None
) -> tuple[bytes, dict[bytes, bytes]]:
    text = orjson.dumps(header)
    return text + raw, {HEADER.encode(): str(len(text) if length is None else length).encode()}


def _sized(size: object, **changes: Any) -> dict[str, Any]:
    """A request whose one tensor is said to be ``size`` bytes of binary data."""
    changes = {"data": None, **changes}
    return {"inputs": [_tensor(parameters={"binary_data_size": size}, **changes)]}


_BYTES = {"datatype": "BYTES", "shape": [2]}
BAD_FRAMES = [
    (_framed(_sized(784), bytes(783)), "binary_data_size of 'pixels' is 784 but 783 bytes follow"),
    (_framed(_sized(784), bytes(785)), "is 784 but 785 bytes follow"),
    (_framed(_sized(784), bytes(784), length=10**6), "is 1000000 but the body has"),
    (_framed(_sized(784), bytes(784), length="-5"), "must be a byte count, got '-5'"),
    (_framed(_sized(784), bytes(784), length="9" * 5000), "must be a byte count"),
    (_framed(_sized(784), bytes(784), length="٣"), "must be a byte count"),
    (_framed(_sized(784), bytes(784), length=5), "invalid JSON"),
    (_framed(_sized(True), b"\1"), "binary_data_size of 'pixels' is True"),
    (_framed(_sized(784, datatype="FP32"), bytes(784)), "784 values of 4 bytes are 3136 bytes"),
    (_framed(_sized(784, shape=[2**62, 784]), bytes(784)), "shape[0] (images) must be 1..256"),
    (_framed({"inputs": [_tensor()]}, bytes(8)), "8 bytes follow the JSON header; no binary"),
    (_framed(_sized(4, data=[0] * 784), bytes(4)), "in data or as binary data, not both"),
    (_framed(_sized(6, **_BYTES), b"\5\0\0\0ab"), "BYTES element 0 is cut short"),
    (_framed(_sized(3, **_BYTES), b"\0\0\0"), "BYTES element 0 is cut short"),
    (_framed(_sized(7, **_BYTES), b"\1\0\0\0a\0\0"), "BYTES element 1 is cut short"),
    (_framed(_sized(7, datatype="BYTES", shape=[1]), b"\1\0\0\0abc"), "2 bytes follow the 1"),
]


@pytest.mark.parametrize(("framed", "says"), BAD_FRAMES)
async def test_binary_bodies_that_disagree_with_their_header_are_refused(
    client: httpx.AsyncClient, framed: tuple[bytes, dict[bytes, bytes]], says: str
) -> None:
    body, headers = framed
    response = await client.post(INFER, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]
    assert (await client.get("/v2/health/ready")).status_code == 200


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


async def test_a_compressed_body_is_refused_with_415(client: httpx.AsyncClient) -> None:
    response = await client.post(INFER, content=b"x", headers={"content-encoding": "gzip"})
    assert response.status_code == 415 and "uncompressed" in response.json()["error"]


async def test_unknown_model_or_version_is_404_naming_what_is_served(
    client: httpx.AsyncClient,
) -> None:
    unknown = await client.post("/v2/models/resnet/infer", json={"inputs": [_tensor()]})
    assert unknown.status_code == 404
    assert f"this server serves {MODEL_NAME!r}" in unknown.json()["error"]
    version = await client.get(f"/v2/models/{MODEL_NAME}/versions/7")
    assert version.status_code == 404 and "serving version 1" in version.json()["error"]


async def test_health_and_metadata_describe_what_is_accepted(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    for path in ("/v2", "/v2/"):
        server = (await client.get(path)).json()
        assert server["name"] == "mnistops" and server["extensions"] == ["binary_tensor_data"]
    meta = (await client.get(f"/v2/models/{MODEL_NAME}")).json()
    (pixels,) = meta["inputs"]
    assert meta["versions"] == ["1"] and pixels["shape"] == [-1, 784]
    assert pixels["parameters"]["datatypes"].split(",") == [*DTYPES, "BYTES"]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "is_digit", "datatype": "BOOL", "shape": [-1]},
    ]
    ready = await client.get(f"/v2/models/{MODEL_NAME}/versions/1/ready")
    assert ready.json() == {"name": MODEL_NAME, "ready": True}


def test_the_documented_input_name_is_the_checked_one() -> None:
    documented = schemas.InferInput.model_json_schema()["properties"]["name"]
    assert documented["const"] == INPUT_NAME


_ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**64), st.floats(), st.text(max_size=4))
_TENSORS = st.fixed_dictionaries(
    {
        "name": st.sampled_from([INPUT_NAME, "x"]),
        "datatype": st.sampled_from([*DTYPES, "BYTES", "BOOL", None]),
        "shape": st.one_of(_ANY, st.lists(_ANY, max_size=3), st.sampled_from([[1, 784], [1]])),
        "parameters": st.one_of(_ANY, st.dictionaries(st.sampled_from(["binary_data_size"]), _ANY)),
        "data": st.one_of(_ANY, st.lists(_ANY, max_size=4)),
    }
)
_EXTRAS = st.dictionaries(
    st.sampled_from(["id", "parameters", "outputs"]),
    st.one_of(_ANY, st.lists(st.fixed_dictionaries({"name": _ANY, "parameters": _ANY}))),
)


@settings(max_examples=400, deadline=None, database=None)
@given(tensor=_TENSORS, binary=st.binary(max_size=40), sized=st.booleans(), extra=_EXTRAS)
def test_any_request_is_read_or_refused_with_an_input_error(
    tensor: dict[str, Any], binary: bytes, sized: bool, extra: dict[str, Any]
) -> None:
    if sized:  # the binary section and its declared size agree: the framing is read further
        tensor["parameters"] = {"binary_data_size": len(binary)}
    try:
        infer_request({"inputs": [tensor], **extra}, binary, Settings(monitoring=False))
    except InputError as refused:
        assert refused.http_status in (400, 413)
