"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``, served on
the HTTP server's event loop and sharing its model, micro-batcher and monitor.

The messages come from the protocol's own proto (``protocol/open_inference_grpc.proto``,
from kserve/open-inference-protocol), shipped compiled as a descriptor set
(``open_inference_grpc.binpb``, ``make proto``) and turned into message classes at
import in a private descriptor pool: no generated code, so no check that ties it to the
protobuf version that generated it, and no clash with a client's own classes of the
same names (Triton's ``tritonclient.grpc`` registers them too).

A request becomes the same checked tensor as the HTTP protocol's (``tensors.py``): raw
contents are the binary extension's bytes, typed contents the JSON ``data``. Every
refusal is INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED with a message that says
what is accepted; INTERNAL is kept for faults of the server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from mnistops import __version__
from mnistops.config import Settings
from mnistops.errors import MnistopsError, ServeError
from mnistops.ids import new_request_id
from mnistops.imaging import InputError, exception_text
from mnistops.serve import v2
from mnistops.serve.inputs import RequestedOutput, checked_infer_request
from mnistops.serve.metrics import IN_FLIGHT, record_request
from mnistops.serve.runtime import Runtime
from mnistops.serve.tensors import BINARY_SIZE, IMAGE_DATATYPE, brief

log = logging.getLogger("mnistops.serve")

SERVICE = "inference.GRPCInferenceService"
DESCRIPTOR_SET = "open_inference_grpc.binpb"
METHOD = "GRPC"
"""The ``method`` label of gRPC calls in ``mnistops_requests_total``."""
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # as gRPC's own message-size limit answers
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
"""The gRPC status of each refusal's HTTP status (the metrics count the HTTP one)."""
CONTENTS = {
    "FP64": "fp64_contents",
    "FP32": "fp32_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "INT16": "int_contents",
    "INT8": "int_contents",
    "UINT64": "uint64_contents",
    "UINT32": "uint_contents",
    "UINT16": "uint_contents",
    "UINT8": "uint_contents",
    IMAGE_DATATYPE: "bytes_contents",
}
"""The typed-contents field that carries each datatype (FP16 has none: raw contents only)."""
CONTENT_DTYPES = {
    "fp64_contents": np.float64,
    "fp32_contents": np.float32,
    "int64_contents": np.int64,
    "int_contents": np.int32,
    "uint64_contents": np.uint64,
    "uint_contents": np.uint32,
}


def _service() -> Any:
    """The protocol's service descriptor, from the shipped descriptor set (private pool)."""
    data = resources.files("mnistops.serve.protocol").joinpath(DESCRIPTOR_SET).read_bytes()
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pool.Add(file)
    return pool.FindServiceByName(SERVICE)


_SERVICE = _service()
RPCS = {m.name: (m.input_type.name, m.output_type.name) for m in _SERVICE.methods}
"""The service's methods: request and response message of each."""
MESSAGES: dict[str, type[message.Message]] = {
    descriptor.name: message_factory.GetMessageClass(descriptor)
    for method in _SERVICE.methods
    for descriptor in (method.input_type, method.output_type)
}
"""Every message of the protocol, by its short name (``ModelInferRequest``, ...)."""

Behaviour = Callable[[Any], Awaitable[message.Message]]


class InferenceService:
    """The methods of ``inference.GRPCInferenceService`` over one Runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def ServerLive(self, request: Any) -> message.Message:  # noqa: N802 (the proto's names)
        return MESSAGES["ServerLiveResponse"](live=True)

    async def ServerReady(self, request: Any) -> message.Message:  # noqa: N802
        return MESSAGES["ServerReadyResponse"](ready=self.runtime.ready)

    async def ModelReady(self, request: Any) -> message.Message:  # noqa: N802
        v2.named_predictor(self.runtime, request.name, request.version or None)
        return MESSAGES["ModelReadyResponse"](ready=self.runtime.ready)

    async def ServerMetadata(self, request: Any) -> message.Message:  # noqa: N802
        return MESSAGES["ServerMetadataResponse"](
            name="mnistops", version=__version__, extensions=v2.EXTENSIONS
        )

    async def ModelMetadata(self, request: Any) -> message.Message:  # noqa: N802
        predictor = v2.named_predictor(self.runtime, request.name, request.version or None)
        metadata = v2.metadata_of(predictor)
        return MESSAGES["ModelMetadataResponse"](
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=_tensor_metadata(metadata["inputs"]),
            outputs=_tensor_metadata(metadata["outputs"]),
            # what the HTTP metadata says in the input's parameters (gRPC's have none)
            properties={f"input.{key}": value for key, value in v2.INPUT_PARAMETERS.items()},
        )

    async def ModelInfer(self, request: Any) -> message.Message:  # noqa: N802
        runtime = self.runtime
        v2.named_predictor(runtime, request.model_name, request.model_version or None)
        payload, binary = infer_payload(request)
        # typed contents are arrays already: no JSON booleans to look for
        inputs = await checked_infer_request(
            payload, binary, runtime.settings, may_hold_booleans=False
        )
        # raw contents always: the protocol's compact form, which every client reads
        wanted = tuple(RequestedOutput(o.name, True) for o in v2.wanted_outputs(inputs))
        request_id = new_request_id()  # the log's key, as on HTTP; the client's id is echoed
        predictor, answer = await runtime.predict(inputs.pixels, request_id)
        described, chunks = v2.output_tensors(wanted, *answer)
        output = MESSAGES["ModelInferResponse"].InferOutputTensor
        answer = MESSAGES["ModelInferResponse"](
            model_name=predictor.name,
            model_version=predictor.version,
            id=request.id,
            outputs=[_described(output, d) for d in described],
            raw_output_contents=chunks,
        )
        answer.parameters[v2.REQUEST_ID_PARAMETER].string_param = request_id  # for feedback
        return answer


def _described(kind: Any, tensor: dict[str, Any]) -> Any:
    """A tensor's name, datatype and shape as the message ``kind``."""
    return kind(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])


def _tensor_metadata(tensors: list[dict[str, Any]]) -> list[Any]:
    kind = MESSAGES["ModelMetadataResponse"].TensorMetadata
    return [_described(kind, t) for t in tensors]


def infer_payload(request: Any) -> tuple[dict[str, Any], bytes]:
    """A ModelInferRequest as the HTTP protocol's JSON object and the bytes after it."""
    if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
        raise InputError(
            f"raw_input_contents holds {len(request.raw_input_contents)} entries for "
            f"{len(request.inputs)} inputs: send one per input, or typed contents"
        )
    tensors, binary = [], b""
    for index, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
            "parameters": _parameters(tensor.parameters),
        }
        typed = [field.name for field, _ in tensor.contents.ListFields()]
        if request.raw_input_contents:
            if typed:
                raise InputError(
                    f"input {brief(tensor.name)} has raw_input_contents and {typed[0]}: send one"
                )
            binary = request.raw_input_contents[index]
            entry["parameters"][BINARY_SIZE] = len(binary)
        elif typed:
            binary = _typed_contents(tensor, typed, entry)
        tensors.append(entry)
    payload: dict[str, Any] = {"inputs": tensors, "parameters": _parameters(request.parameters)}
    if request.id:
        payload["id"] = request.id
    if request.outputs:
        payload["outputs"] = [
            {"name": o.name, "parameters": _parameters(o.parameters)} for o in request.outputs
        ]
    return payload, binary


def _typed_contents(tensor: Any, typed: list[str], entry: dict[str, Any]) -> bytes:
    """Put an input's typed contents in ``entry`` (numbers as ``data``); BYTES elements
    become the binary extension's length-prefixed bytes, which are returned."""
    field = CONTENTS.get(tensor.datatype)
    if field is None or typed != [field]:
        where = f"{field} or raw_input_contents" if field else "raw_input_contents"
        raise InputError(
            f"input {brief(tensor.name)} of datatype {brief(tensor.datatype)} carries its "
            f"values in {where}, got {', '.join(typed)}"
        )
    values = getattr(tensor.contents, field)
    if tensor.datatype == IMAGE_DATATYPE:
        packed = b"".join(len(v).to_bytes(4, "little") + v for v in values)
        entry["parameters"][BINARY_SIZE] = len(packed)
        return packed
    entry["data"] = np.asarray(values, dtype=CONTENT_DTYPES[field])
    return b""


def _parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A map of InferParameter as plain values."""
    plain = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        plain[key] = getattr(parameter, choice) if choice else None
    return plain


def _handler(name: str, behaviour: Behaviour, runtime: Runtime) -> grpc.RpcMethodHandler:
    """One method: parse the request (a malformed one is the client's mistake), run it,
    map refusals to their status, and count the call as /metrics counts HTTP requests."""
    request_type = MESSAGES[RPCS[name][0]]
    route = f"/{SERVICE}/{name}"
    counted = runtime.monitor is not None  # as HTTP's metrics middleware is

    async def handle(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        status, started = 200, time.perf_counter()
        if counted:
            IN_FLIGHT.inc()
        try:
            try:
                request = request_type.FromString(raw)
            except message.DecodeError as exc:
                raise InputError(
                    f"malformed {RPCS[name][0]} message ({exception_text(exc)})"
                ) from exc
            return (await behaviour(request)).SerializeToString()
        except MnistopsError as exc:
            status = exc.http_status
            code = STATUS_CODES.get(status, grpc.StatusCode.INVALID_ARGUMENT)
            await context.abort(code, str(exc))
        except Exception:
            status = 500
            log.exception("gRPC %s failed", name)
            await context.abort(grpc.StatusCode.INTERNAL, f"{name} failed on the server")
        finally:
            if counted:
                IN_FLIGHT.dec()
                record_request(route, METHOD, status, time.perf_counter() - started)
        raise AssertionError("unreachable: context.abort raises")

    return grpc.unary_unary_rpc_method_handler(handle)


def generic_handler(runtime: Runtime) -> grpc.GenericRpcHandler:
    """The service's methods, for ``grpc.aio.Server.add_generic_rpc_handlers``."""
    service = InferenceService(runtime)
    return grpc.method_handlers_generic_handler(
        SERVICE, {name: _handler(name, getattr(service, name), runtime) for name in RPCS}
    )


class GrpcServer:
    """The gRPC endpoint's lifetime: started after the HTTP server, stopped with its drain."""

    def __init__(self, runtime: Runtime, settings: Settings, *, reuse_port: bool = False) -> None:
        self.runtime = runtime
        self.settings = settings
        self.reuse_port = reuse_port
        """Several processes (``--workers``) share the port; else taking it is an error."""
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        host = self.settings.host
        return f"{f'[{host}]' if ':' in host else host}:{self.settings.grpc_port}"

    async def start(self) -> None:
        """Listen and serve (on the running event loop).

        Raises:
            ServeError: the port cannot be listened on.
        """
        settings = self.settings
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", int(self.reuse_port)),
                ("grpc.max_receive_message_length", settings.max_body_bytes),
            ],
            maximum_concurrent_rpcs=settings.max_in_flight or None,
        )
        server.add_generic_rpc_handlers((generic_handler(self.runtime),))
        try:
            server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise ServeError(
                f"cannot listen for gRPC on {self.address} ({exc}); choose a free "
                "MNISTOPS_GRPC_PORT (0 turns gRPC off)"
            ) from exc
        await server.start()
        self._server = server

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls at once; let calls in flight finish within ``grace_s``."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
