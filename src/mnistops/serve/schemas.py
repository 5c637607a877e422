"""Request and response schemas at the HTTP edge: they document the API in /docs; the
checks of request bodies are in :mod:`mnistops.serve.inputs`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Pixels = list[float] | list[list[float]]
Scale = Literal["unit", "byte"]
"""The scales /predict accepts (``mnistops.serve.inputs`` checks against this list)."""
Datatype = Literal["UINT8", "FP32"]
"""The tensor datatypes v2 accepts (a unit test holds ``inputs.DATATYPE_TOP`` to it)."""


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
    name: str
    shape: list[int]
    datatype: Datatype
    data: list[float] | list[list[float]] | list[list[list[float]]]


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float] | list[int]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


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
