"""Hypothesis against every parser a client reaches: JSON pixels, uploaded images, the Open
Inference Protocol's JSON and binary tensors, the MLflow scoring protocol, and gRPC
messages (well-formed with hostile fields, and raw bytes). Whatever is sent, the answer is
never a 5xx, and a refusal says what was wrong.

The app is the real one on the fake predictor, in process. ``MNISTOPS_FUZZ_CASES`` sets the
examples per target (``make stress`` runs 1,000 of each; ``make test`` a short form).
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnistops.config import Settings
from mnistops.features import IMAGE_PIXELS
from mnistops.serve import grpc_api
from mnistops.serve.app import create_app
from mnistops.serve.tensors import DTYPES, HEADER_LENGTH
from tests.unit.serve.conftest import MODEL_NAME, fake_loader, write_bundle

pytestmark = pytest.mark.unit
CASES = int(os.environ.get("MNISTOPS_FUZZ_CASES", "150"))
FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
INFER = f"/v2/models/{MODEL_NAME}/infer"
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
"""What an HTTP client can put in a header."""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("fuzz")
    bundle = write_bundle(folder / "model")
    app = create_app(
        Settings(
            home=folder / "home",
            model_uri=str(bundle.path),
            monitoring=False,
            reload_interval_s=0,
            max_in_flight=0,
        ),
        bundle,
        loader=fake_loader,
    )
    with TestClient(app, raise_server_exceptions=False) as started:
        yield started


def _no_server_error(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert response.content, "a refusal must say what was wrong"


# --- values a JSON body can hold ---------------------------------------------------------
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@st.composite
def pixel_arrays(draw: st.DrawFn) -> Any:
    """Near-valid pixel arrays: the right length or shape, with a hostile element or two."""
    side = draw(st.sampled_from([IMAGE_PIXELS, IMAGE_PIXELS - 1, IMAGE_PIXELS + 1, 0, 1]))
    values: list[Any] = [draw(st.floats(0, 1)) for _ in range(min(side, 4))] * (side // 4 or 1)
    values = values[:side]
    for _ in range(draw(st.integers(0, 2))):
        if values:
            values[draw(st.integers(0, len(values) - 1))] = draw(scalars)
    if draw(st.booleans()) and len(values) == IMAGE_PIXELS:
        return [values[i : i + 28] for i in range(0, IMAGE_PIXELS, 28)]
    return values


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # NaN and Infinity tokens too


@st.composite
def predict_bodies(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["image", "images", "any", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=200))
    if shape == "any":
        return _dumps(draw(json_values))
    body: dict[str, Any] = {}
    if shape == "image":
        body["image"] = draw(pixel_arrays() | json_values)
    else:
        body["images"] = draw(st.lists(pixel_arrays(), max_size=3) | json_values)
    if draw(st.booleans()):
        body["scale"] = draw(st.sampled_from(["unit", "byte"]) | json_values)
    return _dumps(body)


@given(body=predict_bodies())
@FUZZ
def test_json_pixels_to_predict_never_get_a_server_error(client: TestClient, body: bytes) -> None:
    _no_server_error(
        client.post("/predict", content=body, headers={"content-type": "application/json"})
    )


# --- images ------------------------------------------------------------------------------
def _encoded(mode: str, size: tuple[int, int], kind: str) -> bytes:
    out = io.BytesIO()
    image = Image.new(mode, size)
    image.save(out, format=kind)
    return out.getvalue()


SEEDS = [
    _encoded("L", (28, 28), "PNG"),
    _encoded("RGB", (40, 30), "JPEG"),
    _encoded("I;16", (28, 28), "PNG"),
    _encoded("1", (64, 64), "PNG"),
    _encoded("RGBA", (20, 20), "PNG"),
]


@st.composite
def image_bodies(draw: st.DrawFn) -> bytes:
    """Valid images mutated: bytes flipped, cut short, or spliced with noise."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


@given(body=image_bodies(), media=st.sampled_from(["image/png", "image/jpeg", "multipart"]))
@FUZZ
def test_mutated_images_to_predict_never_get_a_server_error(
    client: TestClient, body: bytes, media: str
) -> None:
    if media == "multipart":
        response = client.post("/predict", files={"file": ("x.png", body, "image/png")})
    else:
        response = client.post("/predict", content=body, headers={"content-type": media})
    _no_server_error(response)


# --- the Open Inference Protocol ----------------------------------------------------------
datatypes = st.sampled_from([*DTYPES, "BYTES"]) | st.text(max_size=6)
shapes = st.lists(st.integers(-3, 2**40) | st.sampled_from([784, 28, 1]), max_size=4) | json_values


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    tensor: dict[str, Any] = {
        "name": draw(st.text(max_size=8) | json_values),
        "datatype": draw(datatypes),
        "shape": draw(shapes),
    }
    contents = draw(st.sampled_from(["pixels", "images", "any", "none"]))
    if contents == "pixels":
        tensor["data"] = draw(pixel_arrays())
    elif contents == "images":
        tensor["data"] = [base64.b64encode(draw(image_bodies())).decode()]
    elif contents == "any":
        tensor["data"] = draw(json_values)
    if draw(st.booleans()):
        tensor["parameters"] = draw(st.dictionaries(st.text(max_size=20), json_values, max_size=3))
    return tensor


@st.composite
def infer_requests(draw: st.DrawFn) -> dict[str, Any]:
    request: dict[str, Any] = {"inputs": draw(st.lists(tensors(), max_size=2) | json_values)}
    if draw(st.booleans()):
        request["id"] = draw(st.text(max_size=20) | json_values)
    if draw(st.booleans()):
        request["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": st.text(max_size=8)})) | json_values
        )
    if draw(st.booleans()):
        request["parameters"] = draw(json_values)
    return request


@given(request=infer_requests())
@FUZZ
def test_v2_json_requests_never_get_a_server_error(
    client: TestClient, request: dict[str, Any]
) -> None:
    _no_server_error(
        client.post(INFER, content=_dumps(request), headers={"content-type": "application/json"})
    )


@given(
    request=infer_requests(),
    tail=st.binary(max_size=3200),
    length=st.none() | st.integers(-5, 10_000).map(str) | header_text,
)
@FUZZ
def test_v2_binary_requests_never_get_a_server_error(
    client: TestClient, request: dict[str, Any], tail: bytes, length: str | None
) -> None:
    header = _dumps(request)
    headers = {"content-type": "application/octet-stream"}
    headers[HEADER_LENGTH] = str(len(header)) if length is None else length
    _no_server_error(client.post(INFER, content=header + tail, headers=headers))


# --- the MLflow scoring protocol -----------------------------------------------------------
@st.composite
def invocation_bodies(draw: st.DrawFn) -> bytes:
    field = draw(
        st.sampled_from(["inputs", "instances", "dataframe_split", "dataframe_records", "any"])
    )
    if field == "any":
        return _dumps(draw(json_values))
    if field == "dataframe_split":
        value: Any = {
            "columns": draw(json_values),
            "data": draw(st.lists(pixel_arrays(), max_size=2) | json_values),
        }
    else:
        value = draw(st.lists(pixel_arrays(), max_size=2) | pixel_arrays() | json_values)
    body = {field: value}
    if draw(st.booleans()):
        body["params"] = draw(json_values)
    return _dumps(body)


@given(
    body=invocation_bodies(),
    media=st.sampled_from(["application/json", "text/csv", "application/json; format=pandas-split"])
    | header_text,
)
@FUZZ
def test_mlflow_invocations_never_get_a_server_error(
    client: TestClient, body: bytes, media: str
) -> None:
    _no_server_error(client.post("/invocations", content=body, headers={"content-type": media}))


# --- gRPC ------------------------------------------------------------------------------------
class _Call(NamedTuple):
    method: str
    invocation_metadata: tuple[()] = ()


class _AbortedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class _Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _AbortedError(code, details)


def _grpc_answer(client: TestClient, raw: bytes) -> grpc.StatusCode:
    """Hand ``raw`` to the ModelInfer method as the gRPC server would; its status."""
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    handler = grpc_api.generic_handler(runtime).service(_Call(f"/{grpc_api.SERVICE}/ModelInfer"))
    assert handler is not None
    try:
        client.portal.call(handler.unary_unary, raw, _Context())  # type: ignore[union-attr]
    except _AbortedError as aborted:
        assert aborted.args[0], "a refusal must say what was wrong"
        return aborted.code
    return grpc.StatusCode.OK


@st.composite
def infer_messages(draw: st.DrawFn) -> bytes:
    request = grpc_api.MESSAGES["ModelInferRequest"](
        model_name=draw(st.sampled_from([MODEL_NAME, ""]) | st.text(max_size=8)),
        id=draw(st.text(max_size=20)),
    )
    for _ in range(draw(st.integers(0, 2))):
        tensor = request.inputs.add(
            name=draw(st.text(max_size=8)),
            datatype=draw(datatypes),
            shape=draw(
                st.lists(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([1, 784]), max_size=3)
            ),
        )
        filled = draw(st.sampled_from(["uint", "fp32", "bytes", "none"]))
        if filled == "uint":
            tensor.contents.uint_contents.extend(
                draw(st.lists(st.integers(0, 2**32 - 1), max_size=800))
            )
        elif filled == "fp32":
            tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=800)))
        elif filled == "bytes":
            tensor.contents.bytes_contents.extend(draw(st.lists(image_bodies(), max_size=2)))
    for _ in range(draw(st.integers(0, 2))):
        request.raw_input_contents.append(draw(st.binary(max_size=3200)))
    if draw(st.booleans()):
        request.outputs.add(name=draw(st.text(max_size=8)))
    return bytes(request.SerializeToString())


@given(raw=infer_messages() | st.binary(max_size=400))
@FUZZ
def test_grpc_infer_messages_never_get_an_internal_error(client: TestClient, raw: bytes) -> None:
    assert _grpc_answer(client, raw) not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def test_the_fuzzed_service_still_answers_a_good_request(client: TestClient) -> None:
    response = client.post("/predict", json={"image": np.zeros(IMAGE_PIXELS).tolist()})
    assert response.status_code == 200 and response.json()["digit"] == 0
    assert _grpc_answer(client, b"") is not grpc.StatusCode.INTERNAL
