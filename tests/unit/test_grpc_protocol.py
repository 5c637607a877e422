"""The gRPC service's messages are the protocol's: the shipped descriptor set is what
protoc makes of the shipped proto, and every method of the proto's service is served."""

from __future__ import annotations

import io
import threading
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from grpc_tools import protoc
from PIL import Image

from mnistops.config import Settings
from mnistops.serve import grpc_api
from mnistops.serve.app import create_app
from tests.unit.serve.conftest import MODEL_NAME, decode_threads, fake_loader, write_bundle

pytestmark = pytest.mark.unit
PROTOCOL = resources.files("mnistops.serve.protocol")


def test_the_descriptor_set_is_compiled_from_the_proto(tmp_path: Path) -> None:
    compiled = tmp_path / "compiled.binpb"
    with resources.as_file(PROTOCOL) as folder:
        status = protoc.main(
            ["protoc", f"-I{folder}", f"--descriptor_set_out={compiled}",
             "open_inference_grpc.proto"]
        )  # fmt: skip
    assert status == 0
    shipped = PROTOCOL.joinpath(grpc_api.DESCRIPTOR_SET).read_bytes()
    assert compiled.read_bytes() == shipped, "run `make proto` after changing the proto"


def test_every_method_of_the_service_is_served() -> None:
    proto = PROTOCOL.joinpath("open_inference_grpc.proto").read_text()
    assert "package inference;" in proto and "service GRPCInferenceService" in proto
    for name, (request, response) in grpc_api.RPCS.items():
        assert f"rpc {name}({request}) returns ({response})" in proto
        assert name in dir(grpc_api.InferenceService)
    assert proto.count("  rpc ") == len(grpc_api.RPCS)


def test_a_typed_request_becomes_the_http_protocols_tensor() -> None:
    request = grpc_api.MESSAGES["ModelInferRequest"](model_name="m", id="a")
    tensor = request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 784])
    tensor.contents.uint_contents.extend([7] * 784)
    tensor.parameters["note"].string_param = "kept"
    request.outputs.add(name="label")
    payload, binary = grpc_api.infer_payload(request)
    (entry,) = payload["inputs"]
    assert binary == b"" and entry["shape"] == [1, 784] and entry["data"].tolist() == [7] * 784
    assert entry["parameters"] == {"note": "kept"} and payload["id"] == "a"
    assert payload["outputs"] == [{"name": "label", "parameters": {}}]
    request.inputs[0].datatype = "BYTES"
    request.inputs[0].shape[:] = [2]
    request.inputs[0].ClearField("contents")
    request.inputs[0].contents.bytes_contents.extend([b"ab", b"cde"])
    payload, binary = grpc_api.infer_payload(request)
    assert binary == b"\x02\0\0\0ab\x03\0\0\0cde"
    assert payload["inputs"][0]["parameters"]["binary_data_size"] == len(binary)


@pytest.mark.anyio
async def test_encoded_images_are_decoded_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = decode_threads(monkeypatch)
    bundle = write_bundle(tmp_path / "model")
    settings = Settings(
        home=tmp_path / "home", model_uri=str(bundle.path), monitoring=False, reload_interval_s=0
    )
    app = create_app(settings, bundle, loader=fake_loader)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(buffer, "PNG")
    request = grpc_api.MESSAGES["ModelInferRequest"](model_name=MODEL_NAME)
    tensor = request.inputs.add(name="pixels", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([buffer.getvalue()] * 2)
    async with app.router.lifespan_context(app):
        answer = await grpc_api.InferenceService(app.state.runtime).ModelInfer(request)
    assert [o.name for o in answer.outputs] == ["probabilities", "label", "is_digit"]
    assert len(threads) == 2 and threading.current_thread() not in threads
