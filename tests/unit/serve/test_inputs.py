"""Body parsing: what the schemas document is what the checks accept."""

from __future__ import annotations

from typing import get_args

import numpy as np
import orjson
import pytest

from mnistops.imaging import InputError, booleans_in
from mnistops.serve import schemas
from mnistops.serve.inputs import DATATYPE_TOP, SCALES, json_pixels, tensor_pixels

pytestmark = pytest.mark.unit


def test_documented_datatypes_and_scales_are_the_checked_ones() -> None:
    assert set(get_args(schemas.Datatype)) == set(DATATYPE_TOP)
    assert set(get_args(schemas.Scale)) == set(SCALES)


def test_a_documented_infer_request_parses_to_unit_pixels() -> None:
    request = schemas.InferRequest.model_validate(
        {
            "inputs": [
                {"name": "pixels", "shape": [1, 784], "datatype": "UINT8", "data": [255] * 784}
            ]
        }
    )
    pixels = tensor_pixels(request.model_dump(), max_images=1)
    assert pixels.shape == (1, 784) and pixels.dtype == np.float32 and pixels.max() == 1.0


def test_a_documented_predict_request_parses_to_unit_pixels() -> None:
    request = schemas.PredictRequest(images=[[0.0] * 784, [255.0] * 784], scale="byte")
    pixels = json_pixels(orjson.dumps(request.model_dump(exclude_none=True)), max_images=2)
    assert pixels.shape == (2, 784) and pixels[1].max() == 1.0


def test_tensor_over_the_image_limit_is_refused() -> None:
    tensor = {"name": "pixels", "shape": [3, 784], "datatype": "FP32", "data": [0.0] * 3 * 784}
    with pytest.raises(InputError, match=r"must be 1\.\.2, got 3"):
        tensor_pixels({"inputs": [tensor]}, max_images=2)


def test_a_boolean_among_numbers_is_refused_in_every_json_input() -> None:
    data = [True] + [0] * 783  # numpy would read it as int64 without a word
    tensor = {"name": "pixels", "shape": [1, 784], "datatype": "UINT8", "data": data}
    with pytest.raises(InputError, match="booleans and null are not numbers"):
        tensor_pixels({"inputs": [tensor]}, max_images=1)
    with pytest.raises(InputError, match="booleans and null are not numbers"):
        json_pixels(orjson.dumps({"image": data}), max_images=1)


def test_the_boolean_hint_reads_only_the_json_header() -> None:
    header = orjson.dumps({"inputs": [{"name": "pixels", "data": [0, 1]}]})
    assert not booleans_in(header + b"true", len(header))  # raw bytes after it are no JSON
    assert booleans_in(b'{"parameters": {"binary_data_output": true}}')
