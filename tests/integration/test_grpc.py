"""The Open Inference Protocol over gRPC as its clients see it: Triton's own client
(``tritonclient.grpc``) against a real ``mnistops serve``, answering what /predict
answers; typed contents and malformed or oversized messages through a bare grpcio
channel; every refusal a client status that says what is accepted, the service ready."""

from __future__ import annotations

import functools
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mnistops.bundle import ModelBundle
from mnistops.data import Mnist
from mnistops.ids import ISSUED
from mnistops.serve.grpc_api import MESSAGES, SERVICE
from tests.support.digits import png, predict_answers
from tests.support.server import RunningServer, run_server

pytestmark = pytest.mark.integration
MODEL = "mnist-classifier"
VERSION = "1"
DIGITS = 24
MAX_BODY_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def live(
    trained_bundle: ModelBundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    from bench.servers import free_port

    env = {"MNISTOPS_MAX_BODY_BYTES": str(MAX_BODY_BYTES)}
    home = tmp_path_factory.mktemp("grpc")
    with run_server(str(trained_bundle.path), free_port(), home, env) as server:
        yield server


@pytest.fixture(scope="module")
def client(live: RunningServer) -> Iterator[triton.InferenceServerClient]:
    triton_client = triton.InferenceServerClient(f"127.0.0.1:{live.grpc_port}")
    yield triton_client
    triton_client.close()


@pytest.fixture(scope="module")
def channel(live: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{live.grpc_port}") as opened:
        yield opened


Call = Callable[[bytes], bytes]


def _method(channel: grpc.Channel, name: str) -> Call:
    """A method of the service as bytes in, bytes out: the message is the test's to make."""
    return channel.unary_unary(f"/{SERVICE}/{name}")


def _infer_raw(channel: grpc.Channel, request: Any) -> Any:
    answer = _method(channel, "ModelInfer")(request.SerializeToString())
    return MESSAGES["ModelInferResponse"].FromString(answer)


@pytest.fixture(scope="module")
def images(mnist: Mnist) -> np.ndarray:
    """The first test digits, uint8 ``[N, 28, 28]``."""
    return mnist.x_test[:DIGITS]


@pytest.fixture(scope="module")
def predicted(live: RunningServer, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return predict_answers(live, images)


def _infer(
    client: triton.InferenceServerClient, array: np.ndarray, datatype: str, **options: Any
) -> triton.InferResult:
    tensor = triton.InferInput("pixels", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return client.infer(MODEL, [tensor], **options)


def test_health_and_metadata_through_tritonclient(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, VERSION)
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "mnistops" and "binary_tensor_data" in server["extensions"]
    metadata = client.get_model_metadata(MODEL, VERSION, as_json=True)
    assert metadata["versions"] == [VERSION] and metadata["platform"] == "onnxruntime_onnx"
    (pixels,) = metadata["inputs"]
    assert (pixels["name"], pixels["datatype"]) == ("pixels", "FP32")
    assert pixels["shape"] == ["-1", "784"]
    assert [(o["name"], o["datatype"]) for o in metadata["outputs"]] == [
        ("probabilities", "FP32"),
        ("label", "INT64"),
        ("is_digit", "BOOL"),
    ]
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("resnet")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert "this server serves 'mnist-classifier'" in str(unknown.value.message())
    with pytest.raises(InferenceServerException) as unknown:
        client.is_model_ready(MODEL, "7")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert "serving version 1" in str(unknown.value.message())


def test_metadata_properties_say_what_is_accepted(channel: grpc.Channel) -> None:
    request = MESSAGES["ModelMetadataRequest"](name=MODEL)
    answer = _method(channel, "ModelMetadata")(request.SerializeToString())
    properties = MESSAGES["ModelMetadataResponse"].FromString(answer).properties
    assert {"UINT8", "INT64", "FP64", "FP16", "BYTES"} <= set(
        properties["input.datatypes"].split(",")
    )
    assert "[-1,28,28]" in properties["input.shapes"]


NUMPY_INPUTS = [
    ("UINT8", lambda x: x.reshape(len(x), -1)),
    ("UINT8", lambda x: x),
    ("INT64", lambda x: x.astype(np.int64)),
    ("INT32", lambda x: x.astype(np.int32)),
    ("FP64", lambda x: x.reshape(len(x), -1) / 255.0),
    ("FP32", lambda x: (x / 255.0).astype(np.float32)),
    ("FP16", lambda x: (x / 255.0).astype(np.float16)),
]


@pytest.mark.parametrize(("datatype", "convert"), NUMPY_INPUTS)
def test_numpy_inputs_answer_what_predict_answers(
    client: triton.InferenceServerClient,
    images: np.ndarray,
    predicted: tuple[np.ndarray, np.ndarray],
    datatype: str,
    convert: Callable[[np.ndarray], np.ndarray],
) -> None:
    result = _infer(client, convert(images), datatype)
    probabilities, digits = predicted
    assert result.as_numpy("label").tolist() == digits.tolist()
    tolerance = 2e-3 if datatype == "FP16" else 1e-6  # FP16 rounds the pixels themselves
    assert result.as_numpy("probabilities") == pytest.approx(probabilities, abs=tolerance)


def test_outputs_as_asked_with_the_id_echoed_and_the_servers_id_for_feedback(
    client: triton.InferenceServerClient,
    live: RunningServer,
    images: np.ndarray,
    predicted: tuple[np.ndarray, np.ndarray],
) -> None:
    label_only = [triton.InferRequestedOutput("label")]
    result = _infer(client, images[:1], "UINT8", outputs=label_only, request_id="数字 7\r\n")
    response = result.get_response()
    assert response.id == "数字 7\r\n" and [o.name for o in response.outputs] == ["label"]
    issued = response.parameters["request_id"].string_param
    assert ISSUED.fullmatch(issued)
    label = int(predicted[1][0])
    given = live.client().post("/feedback", json={"request_id": issued, "label": label})
    assert given.status_code == 200 and given.json()["correct"] is True, given.text
    result = _infer(client, images, "UINT8", outputs=label_only, request_id="数字 7\r\n")
    assert result.as_numpy("label").tolist() == predicted[1].tolist()
    assert result.as_numpy("probabilities") is None
    assert response.model_name == MODEL and response.model_version == VERSION


def test_png_files_in_a_bytes_tensor_answer_what_predict_answers(
    client: triton.InferenceServerClient, live: RunningServer, images: np.ndarray
) -> None:
    files = [png(image) for image in images[:8]]
    http = live.client()
    expected = [
        http.post("/predict", content=f, headers={"content-type": "image/png"}).json()
        for f in files
    ]
    result = _infer(client, np.array(files, dtype=object), "BYTES")
    assert result.as_numpy("label").tolist() == [e["digit"] for e in expected]


def _request(**tensor: Any) -> Any:
    request = MESSAGES["ModelInferRequest"](model_name=MODEL, id="typed")
    request.inputs.add(name="pixels", **tensor)
    return request


def test_typed_contents_answer_what_predict_answers(
    channel: grpc.Channel,
    images: np.ndarray,
    predicted: tuple[np.ndarray, np.ndarray],
) -> None:
    flat = images.reshape(len(images), -1)
    shape = list(flat.shape)
    typed = [
        ("UINT8", {"uint_contents": flat.reshape(-1).tolist()}),
        ("INT32", {"int_contents": flat.reshape(-1).tolist()}),
        ("FP32", {"fp32_contents": (flat.reshape(-1) / 255.0).tolist()}),
        ("BYTES", {"bytes_contents": [png(image) for image in images]}),
    ]
    for datatype, contents in typed:
        tensor_shape = [len(images)] if datatype == "BYTES" else shape
        answer = _infer_raw(
            channel, _request(datatype=datatype, shape=tensor_shape, contents=contents)
        )
        names = [o.name for o in answer.outputs]
        labels = np.frombuffer(answer.raw_output_contents[names.index("label")], np.int64)
        if datatype != "BYTES":  # a resized PNG may differ from /predict's pixels in a digit
            assert labels.tolist() == predicted[1].tolist(), datatype
        else:
            assert (labels == predicted[1]).mean() > 0.9
        assert answer.id == "typed"


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


PIXELS = {"uint_contents": [0] * 784}
REFUSALS = [
    (
        _request(datatype="UINT8", shape=[1, 783], contents={"uint_contents": [0] * 783}),
        "shape must be [N, 784] or [N, 28, 28]",
    ),
    (_request(datatype="BOOL", shape=[1, 784]), "datatype must be FP64"),
    (
        _request(datatype="UINT8", shape=[1, 784], contents={"fp32_contents": [0.0] * 784}),
        "carries its values in uint_contents or raw_input_contents, got fp32_contents",
    ),
    (
        _request(datatype="FP16", shape=[1, 784], contents={"fp32_contents": [0.0] * 784}),
        "carries its values in raw_input_contents",
    ),
    (
        _request(datatype="UINT8", shape=[1, 784], contents={"uint_contents": [256] * 784}),
        "UINT8 values must be finite and within [0, 255]",
    ),
    (_request(datatype="UINT8", shape=[1, 784]), "'pixels' needs data"),
    (
        _request(datatype="UINT8", shape=[-1, 784], contents=PIXELS),
        "shape must be a list of non-negative integers",
    ),
    (
        _request(datatype="UINT8", shape=[2**62, 784], contents=PIXELS),
        "shape[0] (images) must be 1..256",
    ),
    (
        _request(datatype="BYTES", shape=[1], contents={"bytes_contents": [b"GIF89a"]}),
        "image 0:",
    ),
]


@pytest.mark.parametrize(("request_message", "says"), REFUSALS)
def test_refusals_are_invalid_argument_saying_what_is_accepted(
    channel: grpc.Channel, client: triton.InferenceServerClient, request_message: Any, says: str
) -> None:
    error = _refused(lambda: _infer_raw(channel, request_message))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert says in (error.details() or "")
    assert client.is_server_ready()


def test_raw_contents_that_disagree_with_the_tensor_are_refused(
    channel: grpc.Channel, client: triton.InferenceServerClient
) -> None:
    short = _request(datatype="FP32", shape=[1, 784])
    short.raw_input_contents.append(b"\0" * 3135)
    two = _request(datatype="FP32", shape=[1, 784])
    two.raw_input_contents.extend([b"\0" * 3136, b"\0" * 3136])
    both = _request(datatype="UINT8", shape=[1, 784], contents=PIXELS)
    both.raw_input_contents.append(b"\0" * 784)
    cut = _request(datatype="BYTES", shape=[1])
    cut.raw_input_contents.append((100).to_bytes(4, "little") + b"\x89PNG")
    for request, says in (
        (short, "784 values of 4 bytes are 3136 bytes"),
        (two, "raw_input_contents holds 2 entries for 1 inputs"),
        (both, "has raw_input_contents and uint_contents"),
        (cut, "BYTES element 0 is cut short"),
    ):
        error = _refused(functools.partial(_infer_raw, channel, request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in (error.details() or ""), error.details()
    assert client.is_server_ready()


def test_unknown_model_or_output(channel: grpc.Channel) -> None:
    request = _request(datatype="UINT8", shape=[1, 784], contents=PIXELS)
    request.model_name = "resnet"
    error = _refused(lambda: _infer_raw(channel, request))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "serves 'mnist-classifier'" in (
        error.details() or ""
    )
    request = _request(datatype="UINT8", shape=[1, 784], contents=PIXELS)
    request.outputs.add(name="logits")
    error = _refused(lambda: _infer_raw(channel, request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the outputs are 'probabilities', 'label'" in (error.details() or "")


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x2a\x05abc", b"\x0a\xff\xff\xff\xff\x0f"])
def test_malformed_messages_are_invalid_argument(
    channel: grpc.Channel, client: triton.InferenceServerClient, garbage: bytes
) -> None:
    for name in ("ModelInfer", "ModelMetadata"):
        error = _refused(functools.partial(_method(channel, name), garbage))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert re.search(r"malformed Model\w+Request message", error.details() or "")
    assert client.is_server_ready()


def test_a_message_over_the_body_limit_is_resource_exhausted(
    channel: grpc.Channel, client: triton.InferenceServerClient
) -> None:
    request = _request(datatype="FP32", shape=[100, 784])
    request.raw_input_contents.append(b"\0" * (100 * 784 * 4))  # 313,600 bytes > 256 KiB
    error = _refused(lambda: _infer_raw(channel, request))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.is_server_ready()


def _total(text: str, pattern: str) -> float:
    """The sum of the samples of ``pattern`` (a metric's name and labels) in /metrics."""
    return sum(float(v) for v in re.findall(rf"^{pattern} (\S+)$", text, re.MULTILINE))


def test_grpc_calls_are_counted_and_monitored(
    live: RunningServer, client: triton.InferenceServerClient, images: np.ndarray
) -> None:
    http = live.client()
    route = r'route="/inference\.GRPCInferenceService/ModelInfer"'
    ok = rf'mnistops_requests_total\{{method="GRPC",{route},status="200"\}}'
    refused = rf'mnistops_requests_total\{{method="GRPC",{route},status="400"\}}'
    predictions = r"mnistops_predictions_total\{[^}]*\}"
    before = http.get("/metrics").text
    _infer(client, images[:5], "UINT8")
    with pytest.raises(InferenceServerException):
        _infer(client, np.zeros((1, 3), np.uint8), "UINT8")
    deadline = time.monotonic() + 10
    while True:  # the monitor gets gRPC's predictions as it gets HTTP's, every 50 ms
        after = http.get("/metrics").text
        if _total(after, predictions) >= _total(before, predictions) + 5:
            break
        assert time.monotonic() < deadline, "the monitor never counted the gRPC predictions"
        time.sleep(0.1)
    assert _total(after, ok) == _total(before, ok) + 1
    assert _total(after, refused) == _total(before, refused) + 1


def test_sigterm_drains_grpc_calls_and_exits_zero(
    trained_bundle: ModelBundle, images: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from bench.servers import free_port

    outcomes: Counter[str] = Counter()
    stop, lock = threading.Event(), threading.Lock()

    def calls(address: str) -> None:
        with triton.InferenceServerClient(address) as client:
            while not stop.is_set():
                try:
                    _infer(client, images[:4], "UINT8", client_timeout=10)
                    outcome = "OK"
                except InferenceServerException as exc:
                    outcome = str(exc.status())
                with lock:
                    outcomes[outcome] += 1

    env = {"MNISTOPS_GRACE_PERIOD_S": "5"}
    home = tmp_path_factory.mktemp("grpc-drain")
    with run_server(str(trained_bundle.path), free_port(), home, env) as server:
        address = f"127.0.0.1:{server.grpc_port}"
        threads = [threading.Thread(target=calls, args=(address,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        answered = outcomes["OK"]
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(15)
        stop.set()
        for thread in threads:
            thread.join(15)
    assert code == 0, server.log()
    assert answered > 20
    # answered, or (once the port closed) unavailable: never an error of the server's.
    # A call that reaches the port at the instant gRPC stops is cancelled unanswered (grpc's
    # own shutdown): at most one per client.
    assert set(outcomes) <= {"OK", "StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}, outcomes
    assert outcomes["StatusCode.CANCELLED"] <= len(threads), outcomes
