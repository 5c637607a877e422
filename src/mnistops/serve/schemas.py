"""Request and response schemas at the HTTP edge: they document the API in /docs; the
checks of request bodies are in :mod:`mnistops.serve.inputs`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Pixels = list[float] | list[list[float]]
Scale = Literal["unit", "byte"]
"""The scales /predict accepts (``mnistops.serve.inputs`` checks against this list)."""
Datatype = Literal[
    "FP64", "FP32", "FP16", "UINT64", "UINT32", "UINT16", "UINT8", "INT64", "INT32", "INT16", "INT8"
]
"""The numeric tensor datatypes v2 accepts (a unit test holds ``inputs.DATATYPE_TOP`` to it)."""
ImageDatatype = Literal["BYTES"]
"""A v2 tensor of encoded PNG/JPEG images."""
Parameters = dict[str, str | int | float | bool]
"""The protocol's ``parameters``: names to a string, number or boolean."""


class PredictRequest(BaseModel):
    """One image (``image``) or a batch (``images``)."""

    image: Pixels | None = Field(
        default=None,
        description="28x28 nested or 784 flat numbers: floats in [0, 1] or integers 0-255 "
        "(any value above 1 means the 0-255 scale).",
    )
    images: list[Pixels] | None = Field(default=None, description="A batch of images.")
    scale: Scale | None = Field(
        default=None, description="Say the scale explicitly: unit = [0, 1], byte = 0-255."
    )


class Prediction(BaseModel):
    digit: int = Field(description="The predicted digit.")
    confidence: float = Field(description="The probability of that digit.")
    probabilities: list[float] = Field(description="Probabilities of digits 0-9.")
    is_digit: bool = Field(
        description="False when the image does not look like a digit at all (blank, noise, "
        "a scribble, a photo of something else): the digit is then a guess."
    )


class PredictResponse(Prediction):
    model_name: str
    model_version: str
    request_id: str
    predictions: list[Prediction] | None = Field(
        default=None, description="One entry per image when a batch was sent."
    )


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong and what is accepted.")
    request_id: str | None = None


class InferInput(BaseModel):
    name: Literal["pixels"]
    shape: list[int] = Field(
        description="[N, 784] or [N, 28, 28] for numbers; [N] or [N, 1] for BYTES images."
    )
    datatype: Datatype | ImageDatatype = Field(
        description="Integer datatypes carry pixels 0-255, floating-point ones [0, 1]; "
        "BYTES carries PNG or JPEG files (base64 strings in JSON)."
    )
    parameters: Parameters | None = Field(
        default=None,
        description="binary_data_size: the tensor's bytes follow the JSON header "
        "(binary tensor data extension); other parameters are ignored.",
    )
    data: list[float] | list[list[float]] | list[list[list[float]]] | list[str] | None = Field(
        default=None, description="The values, flat or nested; absent when sent as binary."
    )


class RequestedOutput(BaseModel):
    name: Literal["probabilities", "label"]
    parameters: Parameters | None = Field(
        default=None, description="binary_data: true to receive this output as binary."
    )


class InferRequest(BaseModel):
    id: str | None = Field(default=None, description="Echoed in the response as sent.")
    parameters: Parameters | None = Field(
        default=None, description="binary_data_output: true to receive every output as binary."
    )
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestedOutput] | None = Field(
        default=None, description="The outputs to return (all of them when absent)."
    )


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = Field(
        default=None, description="binary_data_size when the output is sent as binary."
    )
    data: list[float] | list[int] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: Parameters | None = Field(
        default=None, description="What else is accepted: datatypes, shapes, scales."
    )


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


def request_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema for a route's ``openapi_extra``, its ``$defs`` inlined: in
    the OpenAPI document a ``#/$defs/...`` reference would point at the document's root,
    where there is none (ReDoc and generated clients fail on it)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return inline({**defs[ref.removeprefix("#/$defs/")], **rest})
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return dict(inline(schema))
