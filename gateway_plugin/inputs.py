"""Turning a request's `inputs` into tensors: v2 tensors as given, or the plain-value shorthand.

For a model with one input, `inputs` may be a plain JSON value (string, number, nested list); the
model's metadata gives its name, datatype and shape. The value may carry the batch dimension,
leave it out (a batch of one is assumed), or be flat with exactly the elements of one item.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from discovery.node import ModelInfo
from gateway_plugin.errors import BadRequest, NoCapacity, PayloadTooLarge
from worker.protocol import Limits, Tensor, tensor_from_json
from worker.protocol.checked import TensorMeta
from worker.protocol.models import WireTensor

__all__ = ["check_batch_size", "is_tensor_list", "to_tensors"]


def is_tensor_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and "name" in item and "datatype" in item for item in value)
    )


def _fit_shape(given: tuple[int, ...], declared: tuple[int, ...], model: str) -> list[int]:
    if len(given) == len(declared):
        return list(given)
    one_item = [1 if dim == -1 else dim for dim in declared]
    if len(given) == len(declared) - 1 and declared and declared[0] == -1:
        return [1, *given]
    if math.prod(given) == math.prod(one_item) and declared.count(-1) <= 1:
        return one_item
    raise BadRequest(f"a value of shape {list(given)} does not fit model {model!r}'s input shape {list(declared)}")


def _plain_value(value: Any, info: ModelInfo, limits: Limits) -> Tensor:
    if len(info.inputs) != 1:
        names = [spec.name for spec in info.inputs]
        raise BadRequest(f"model {info.name!r} has inputs {names}: send them as a list of v2 tensors")
    spec = info.inputs[0]
    data = value if isinstance(value, list) else [value]
    try:
        given = np.shape(data)
    except ValueError as exc:
        raise BadRequest("inputs is a ragged nested list") from exc
    if math.prod(given) > limits.max_tensor_elements:
        raise PayloadTooLarge(f"inputs has more than {limits.max_tensor_elements} elements")
    shape = _fit_shape(tuple(given), spec.shape, info.name)
    return tensor_from_json(WireTensor(name=spec.name, shape=shape, datatype=spec.datatype, data=data), limits)


def check_batch_size(info: ModelInfo, tensors: Sequence[TensorMeta], limit: int) -> None:
    """PayloadTooLarge when an input's batch dimension (a dynamic first dim) has more than `limit` rows."""
    batched = {spec.name for spec in info.inputs if spec.shape[:1] == (-1,)}
    for tensor in tensors:
        if tensor.name in batched and tensor.shape and tensor.shape[0] > limit:
            raise PayloadTooLarge(f"input {tensor.name!r} has a batch of {tensor.shape[0]}, over the limit of {limit}")


def to_tensors(value: Any, info: ModelInfo | None, limits: Limits) -> list[Tensor]:
    """The request's inputs as tensors; BadRequest (or PayloadTooLarge) when they cannot be, NoCapacity
    when a plain value needs metadata no reachable node gave."""
    if is_tensor_list(value):
        try:
            wires = [WireTensor.model_validate(item) for item in value]
        except ValidationError as exc:
            raise BadRequest(f"malformed input tensor: {exc.errors(include_url=False)[0]['msg']}") from exc
        if len({wire.name for wire in wires}) != len(wires):  # as decode_request: one tensor per name
            raise BadRequest("input names must be unique")
        return [tensor_from_json(wire, limits) for wire in wires]
    if value is None or value == [] or isinstance(value, dict):
        raise BadRequest("inputs must be a list of v2 tensors or a plain value (string, number, nested list)")
    if info is None:
        # Only when no node that could describe the model is reachable (callers answer 404 for a
        # model nobody has first): the request is fine, the cluster cannot read it now.
        raise NoCapacity(
            "the model's metadata is not known now (no node that serves it can be reached): "
            "retry, or send inputs as v2 tensors"
        )
    return [_plain_value(value, info, limits)]
