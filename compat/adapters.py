"""Adapters: an existing endpoint's request/response shape to and from the cluster's.

An adapter has three jobs (the `LegacyAdapter` protocol):

- `to_cluster(request)`: the legacy request as an `InferenceRequest`, or None when this request
  is not one for the cluster (the original handler then answers it, as before);
- `to_response(outcome, request)`: the cluster's answer in the endpoint's own response shape;
- `local_outputs(status, body)`: the original handler's answer as named arrays, so that shadow
  mode can compare it with the cluster's (None: not comparable, e.g. an error answer).

`JsonInferenceAdapter` is the default, for endpoints that take `{"model", "inputs",
"parameters"?}` and answer `{"model", "model_version", "outputs": [v2 tensors]}`. Another
shape needs a class with these three methods, passed as `adapter=` to the middleware; an
adapter may raise any exception, which only means "not for the cluster" (logged, then fallback).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from starlette.datastructures import Headers

from gateway_plugin import InferenceRequest, Outcome

__all__ = [
    "JsonInferenceAdapter",
    "LegacyAdapter",
    "LegacyRequest",
    "LegacyResponse",
    "compare_outputs",
    "outcome_arrays",
]

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass(frozen=True, slots=True)
class LegacyRequest:
    """A request to the legacy path, body read whole (bounded by the plugin's body limit)."""

    method: str
    path: str
    query_string: bytes
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class LegacyResponse:
    body: bytes
    status: int = 200
    media_type: str = "application/json"


class LegacyAdapter(Protocol):
    def to_cluster(self, request: LegacyRequest) -> InferenceRequest | None: ...

    def to_response(self, outcome: Outcome, request: LegacyRequest) -> LegacyResponse: ...

    def local_outputs(self, status: int, body: bytes) -> Arrays | None: ...


def outcome_arrays(outcome: Outcome) -> Arrays:
    return {tensor.name: np.asarray(tensor.data) for tensor in outcome.outputs}


class JsonInferenceAdapter:
    """`{"model", "inputs", "parameters"?}` in, `{"model", "model_version", "outputs"}` out."""

    def __init__(self, *, default_model: str | None = None) -> None:
        self._default_model = default_model

    def to_cluster(self, request: LegacyRequest) -> InferenceRequest | None:
        body = json.loads(request.body)
        if not isinstance(body, dict) or "inputs" not in body:
            return None
        model = body.get("model", self._default_model)
        if not isinstance(model, str):
            return None
        parameters = body.get("parameters") or {}
        return InferenceRequest(model=model, inputs=body["inputs"], parameters=parameters)

    def to_response(self, outcome: Outcome, request: LegacyRequest) -> LegacyResponse:
        outputs = [
            {"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "data": _plain(t.data)}
            for t in outcome.outputs
        ]
        body = {"model": outcome.model, "model_version": outcome.model_version, "outputs": outputs}
        return LegacyResponse(json.dumps(body, separators=(",", ":")).encode())

    def local_outputs(self, status: int, body: bytes) -> Arrays | None:
        if status != 200:
            return None
        parsed = json.loads(body)
        outputs = parsed.get("outputs") if isinstance(parsed, dict) else None
        if not isinstance(outputs, list):
            return None
        arrays: Arrays = {}
        for item in outputs:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                return None
            data = np.asarray(item.get("data", []))
            shape = item.get("shape")
            arrays[item["name"]] = data.reshape(shape) if isinstance(shape, list) else data
        return arrays


def _plain(data: np.ndarray[Any, Any]) -> list[Any]:
    flat = data.reshape(-1)
    if flat.dtype == object:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in flat.tolist()]
    return list(flat.tolist())


def compare_outputs(local: Arrays, cluster: Arrays, *, rtol: float = 1e-3, atol: float = 1e-4) -> str | None:
    """None when the two answers agree (same names, shapes, values within tolerance), else why not."""
    if set(local) != set(cluster):
        return f"outputs differ: local {sorted(local)}, cluster {sorted(cluster)}"
    for name in sorted(local):
        mine, theirs = local[name], cluster[name]
        if mine.size != theirs.size:
            return f"{name}: {mine.size} values locally, {theirs.size} on the cluster"
        mine, theirs = mine.reshape(-1), theirs.reshape(-1)
        if mine.dtype.kind in "fiub" and theirs.dtype.kind in "fiub":
            if not np.allclose(mine.astype(np.float64), theirs.astype(np.float64), rtol=rtol, atol=atol):
                worst = float(np.max(np.abs(mine.astype(np.float64) - theirs.astype(np.float64))))
                return f"{name}: values differ by up to {worst:.3g}"
        elif [_text(v) for v in mine.tolist()] != [_text(v) for v in theirs.tolist()]:
            return f"{name}: values differ"
    return None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
