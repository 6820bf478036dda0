"""A request's `inputs`: v2 tensors as given, or the plain-value shorthand for one-input models."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from discovery.node import ModelInfo
from gateway_plugin.errors import BadRequest, NoCapacity, PayloadTooLarge
from gateway_plugin.inputs import is_tensor_list, to_tensors
from gateway_plugin.local import model_info
from worker.config import TensorSpec
from worker.protocol import Limits
from worker.repository import read_config

DIGITS_FOLDER = Path(__file__).resolve().parents[3] / "worker" / "bundled_models" / "digits"


@pytest.fixture(scope="module")
def digits() -> ModelInfo:
    info = model_info(read_config(DIGITS_FOLDER))
    assert [(spec.name, spec.datatype, spec.shape) for spec in info.inputs] == [("image", "FP32", (-1, 1, 8, 8))]
    return info


def pixels(count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.randrange(17) / 16 for _ in range(count)]


def nest(flat: list[Any], shape: tuple[int, ...]) -> Any:
    return np.asarray(flat, dtype=np.float64).reshape(shape).tolist()


def test_v2_tensor_list_passes_through(digits: ModelInfo) -> None:
    values = pixels(128, 1)
    wire = [
        {"name": "image", "datatype": "FP32", "shape": [2, 1, 8, 8], "data": values},
        {"name": "other", "datatype": "INT64", "shape": [3], "data": [1, -2, 3]},
    ]
    assert is_tensor_list(wire)
    image, other = to_tensors(wire, digits, Limits())
    assert (image.name, image.datatype, image.shape) == ("image", "FP32", [2, 1, 8, 8])
    assert image.data.ravel().tolist() == np.asarray(values, dtype=np.float32).tolist()
    assert (other.name, other.datatype, other.shape) == ("other", "INT64", [3])
    assert other.data.tolist() == [1, -2, 3]
    # No metadata needed for tensors.
    (again, _) = to_tensors(wire, None, Limits())
    assert np.array_equal(again.data, image.data)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((8, 8), [1, 1, 8, 8]),
        ((1, 8, 8), [1, 1, 8, 8]),
        ((1, 1, 8, 8), [1, 1, 8, 8]),
        ((2, 1, 8, 8), [2, 1, 8, 8]),
        ((5, 1, 8, 8), [5, 1, 8, 8]),
        ((64,), [1, 1, 8, 8]),
    ],
)
def test_plain_value_takes_the_model_shape(digits: ModelInfo, shape: tuple[int, ...], expected: list[int]) -> None:
    flat = pixels(int(np.prod(shape)), seed=len(shape))
    (tensor,) = to_tensors(nest(flat, shape), digits, Limits())
    assert tensor.name == "image"
    assert tensor.datatype == "FP32"
    assert tensor.shape == expected
    assert tensor.data.dtype == np.float32
    assert tensor.data.ravel().tolist() == np.asarray(flat, dtype=np.float32).tolist()


def test_plain_value_for_a_fixed_shape_model() -> None:
    info = ModelInfo(
        name="fixed",
        version="1",
        platform="onnxruntime_onnx",
        inputs=(TensorSpec(name="x", datatype="INT32", shape=(2, 3)),),
        outputs=(TensorSpec(name="y", datatype="INT32", shape=(2,)),),
    )
    (tensor,) = to_tensors([1, 2, 3, 4, 5, 6], info, Limits())
    assert tensor.shape == [2, 3]
    assert tensor.data.tolist() == [[1, 2, 3], [4, 5, 6]]
    with pytest.raises(BadRequest):
        to_tensors([1, 2, 3, 4, 5], info, Limits())


@pytest.mark.parametrize(
    "value",
    [
        [[0.0] * 8] * 7 + [[0.0] * 7],  # ragged
        [[0.0] * 8, [0.0] * 3],  # ragged
        [[0.0] * 7] * 7,  # 7x7
        [0.0] * 63,  # one short
        [[[0.0] * 8] * 8] * 2 + [[[0.0] * 8] * 7],  # ragged batch
        {"image": [[0.0] * 8] * 8},  # a dict
        {},
        None,
        [],
    ],
    ids=["ragged-last-row", "ragged", "7x7", "63", "ragged-batch", "dict", "empty-dict", "none", "empty-list"],
)
def test_plain_values_that_do_not_fit_are_bad_requests(digits: ModelInfo, value: Any) -> None:
    with pytest.raises(BadRequest):
        to_tensors(value, digits, Limits())


def test_plain_value_without_metadata_is_no_capacity_not_the_callers_fault() -> None:
    with pytest.raises(NoCapacity):
        to_tensors([[0.0] * 8] * 8, None, Limits())


def test_plain_value_for_a_multi_input_model_is_a_bad_request() -> None:
    info = ModelInfo(
        name="pair",
        version="1",
        platform="onnxruntime_onnx",
        inputs=(
            TensorSpec(name="a", datatype="FP32", shape=(-1, 4)),
            TensorSpec(name="b", datatype="FP32", shape=(-1, 4)),
        ),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 1)),),
    )
    with pytest.raises(BadRequest, match="inputs"):
        to_tensors([1.0, 2.0, 3.0, 4.0], info, Limits())
    # v2 tensors still work for it.
    wire = [
        {"name": "a", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
        {"name": "b", "datatype": "FP32", "shape": [1, 4], "data": [5, 6, 7, 8]},
    ]
    assert [tensor.name for tensor in to_tensors(wire, info, Limits())] == ["a", "b"]


def test_malformed_tensor_in_a_list_is_a_bad_request(digits: ModelInfo) -> None:
    wire = [{"name": "image", "datatype": "FP32", "shape": "1x64", "data": [0.0] * 64}]
    with pytest.raises(BadRequest):
        to_tensors(wire, digits, Limits())


def test_plain_value_over_the_element_limit_is_too_large(digits: ModelInfo) -> None:
    value = nest(pixels(3 * 64, 2), (3, 1, 8, 8))
    (ok,) = to_tensors(value, digits, Limits(max_tensor_elements=3 * 64))
    assert ok.shape == [3, 1, 8, 8]
    with pytest.raises(PayloadTooLarge):
        to_tensors(value, digits, Limits(max_tensor_elements=3 * 64 - 1))
