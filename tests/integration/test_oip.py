"""The Open Inference Protocol as its clients see it: Triton's own HTTP client
(``tritonclient.http``, binary tensors by default) against a real ``mnistops serve``,
answering what /predict answers; and schemathesis over the protocol's own OpenAPI
document (vendored in tests/data), with no server error."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
import tritonclient.http as triton
import yaml
from bench.servers import free_port
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from tritonclient.utils import InferenceServerException

from mnistops.bundle import ModelBundle
from mnistops.data import Mnist
from tests.support.digits import png, predict_answers
from tests.support.server import RunningServer, run_server

pytestmark = pytest.mark.integration
MODEL = "mnist-classifier"
VERSION = "1"
DIGITS = 48
PROTOCOL_DOCUMENT = Path(__file__).parents[1] / "data" / "open_inference_rest.yaml"
EXAMPLES = {"get": 15, "post": max(150, int(os.environ.get("MNISTOPS_FUZZ_CASES", "0")) // 2)}
"""Generated requests per operation and generation mode, by method."""
Operation = schemathesis.APIOperation[Any, Any, Any, Any]


@pytest.fixture(scope="module")
def live(
    trained_bundle: ModelBundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with run_server(str(trained_bundle.path), free_port(), tmp_path_factory.mktemp("oip")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(live: RunningServer) -> Iterator[triton.InferenceServerClient]:
    triton_client = triton.InferenceServerClient(live.url.removeprefix("http://"))
    yield triton_client
    triton_client.close()


@pytest.fixture(scope="module")
def images(mnist: Mnist) -> np.ndarray:
    """The first test digits, uint8 ``[N, 28, 28]``."""
    return mnist.x_test[:DIGITS]


@pytest.fixture(scope="module")
def predicted(live: RunningServer, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return predict_answers(live, images)


def _infer(
    client: triton.InferenceServerClient,
    array: np.ndarray,
    datatype: str,
    binary: bool = True,
    **options: Any,
) -> triton.InferResult:
    tensor = triton.InferInput("pixels", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return client.infer(MODEL, [tensor], **options)


def test_health_and_metadata_through_tritonclient(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, VERSION)
    assert not client.is_model_ready("resnet")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata(MODEL, VERSION)
    (pixels,) = metadata["inputs"]
    assert pixels["name"] == "pixels" and pixels["shape"] == [-1, 784]
    assert {"UINT8", "INT64", "FP64", "BYTES"} <= set(pixels["parameters"]["datatypes"].split(","))
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
        ("probabilities", "FP32"),
        ("label", "INT64"),
        ("is_digit", "BOOL"),
    ]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("resnet")
    assert unknown.value.status() == "404"


NUMPY_INPUTS = [
    ("UINT8", lambda x: x.reshape(len(x), -1), True),
    ("UINT8", lambda x: x, False),
    ("INT64", lambda x: x.astype(np.int64), True),
    ("FP64", lambda x: x.reshape(len(x), -1) / 255.0, True),
    ("FP32", lambda x: (x / 255.0).astype(np.float32), True),
    ("FP32", lambda x: (x.reshape(len(x), -1) / 255.0).astype(np.float32), False),
]


@pytest.mark.parametrize(("datatype", "convert", "binary"), NUMPY_INPUTS)
def test_numpy_inputs_json_or_binary_answer_what_predict_answers(
    client: triton.InferenceServerClient,
    images: np.ndarray,
    predicted: tuple[np.ndarray, np.ndarray],
    datatype: str,
    convert: Any,
    binary: bool,
) -> None:
    result = _infer(client, convert(images), datatype, binary)  # outputs come back binary
    probabilities, digits = predicted
    assert result.as_numpy("label").tolist() == digits.tolist()
    assert result.as_numpy("probabilities") == pytest.approx(probabilities, abs=1e-6)
    assert result.as_numpy("is_digit").dtype == np.bool_


def test_outputs_as_asked_with_the_id_and_parameters(
    client: triton.InferenceServerClient,
    images: np.ndarray,
    predicted: tuple[np.ndarray, np.ndarray],
) -> None:
    label_only = [triton.InferRequestedOutput("label", binary_data=False)]
    result = _infer(client, images, "UINT8", outputs=label_only, request_id="digits-7")
    response = result.get_response()
    assert response["id"] == "digits-7" and [o["name"] for o in response["outputs"]] == ["label"]
    assert response["outputs"][0]["data"] == predicted[1].tolist()
    assert result.as_numpy("probabilities") is None
    both = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("label", binary_data=False),
    ]
    result = _infer(
        client,
        images,
        "UINT8",
        outputs=both,
        request_id="数字\r\n",
        priority=1,
        parameters={"note": "ignored"},
    )
    assert result.get_response()["id"] == "数字\r\n"
    assert result.as_numpy("probabilities") == pytest.approx(predicted[0], abs=1e-6)
    assert result.get_output("label")["data"] == predicted[1].tolist()


def test_png_files_in_a_bytes_tensor_answer_what_predict_answers(
    client: triton.InferenceServerClient, live: RunningServer, images: np.ndarray
) -> None:
    files = [png(image) for image in images[:12]]
    http = live.client()
    expected = [
        http.post("/predict", content=f, headers={"content-type": "image/png"}).json()
        for f in files
    ]
    as_text = [base64.b64encode(f) for f in files]  # JSON carries BYTES as text
    for tensor, binary in ((files, True), (as_text, False)):
        result = _infer(client, np.array(tensor, dtype=object), "BYTES", binary)
        assert result.as_numpy("label").tolist() == [e["digit"] for e in expected]
        probabilities = [e["probabilities"] for e in expected]
        assert result.as_numpy("probabilities") == pytest.approx(np.array(probabilities), abs=1e-6)


@pytest.mark.parametrize(
    ("array", "datatype", "outputs", "says"),
    [
        (np.zeros((1, 784), bool), "BOOL", None, "datatype must be FP64"),
        (np.zeros((1, 783), np.uint8), "UINT8", None, "shape must be [N, 784] or [N, 28, 28]"),
        (np.zeros((1, 784), np.uint8), "UINT8", ["logits"], "unknown output 'logits'"),
        (np.full((1, 784), 2.0), "FP64", None, "FP64 values must be finite and within [0, 1]"),
    ],
)
def test_refusals_reach_tritonclient_as_400_saying_what_is_accepted(
    client: triton.InferenceServerClient,
    array: np.ndarray,
    datatype: str,
    outputs: list[str] | None,
    says: str,
) -> None:
    asked = [triton.InferRequestedOutput(name) for name in outputs or []]
    with pytest.raises(InferenceServerException) as refused:
        _infer(client, array, datatype, outputs=asked or None)
    assert refused.value.status() == "400" and says in str(refused.value.message())
    assert client.is_server_ready()


def _protocol_document(model: str, version: str) -> dict[str, Any]:
    """The protocol's document with the served model's name and version in its paths."""
    document: dict[str, Any] = yaml.safe_load(PROTOCOL_DOCUMENT.read_text(encoding="utf-8"))
    paths = {}
    for path, item in document["paths"].items():
        item.pop("parameters", None)  # ${MODEL_NAME} and ${MODEL_VERSION}, now substituted
        paths[path.replace("${MODEL_NAME}", model).replace("${MODEL_VERSION}", version)] = item
    document["paths"] = paths
    return document


def test_requests_generated_from_the_protocol_document_get_no_server_error(
    live: RunningServer,
) -> None:
    schema = schemathesis.openapi.from_dict(_protocol_document(MODEL, VERSION))
    failures: list[str] = []
    sent = [0]
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()
        modes = list(GenerationMode) if operation.body else [GenerationMode.POSITIVE]
        for mode in modes:
            _fuzz(operation, mode, live.url, failures, sent)
    assert not failures, failures[:5]
    assert sent[0] >= 2 * EXAMPLES["post"], sent
    assert httpx.get(f"{live.url}/v2/health/ready").status_code == 200


def _fuzz(
    operation: Operation, mode: GenerationMode, url: str, failures: list[str], sent: list[int]
) -> None:
    """Send generated requests for one operation; note any 5xx."""

    @settings(
        max_examples=EXAMPLES[operation.method.lower()],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case[Operation]) -> None:
        sent[0] += 1
        response = case.call(base_url=url, timeout=30)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.path} -> {response.status_code}: {case.body!r}")

    run()
