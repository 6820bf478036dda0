"""The default legacy adapter and the output comparison used by shadow mode."""

from __future__ import annotations

import json

import numpy as np
from starlette.datastructures import Headers

from compat.adapters import JsonInferenceAdapter, LegacyRequest, compare_outputs
from gateway_plugin import Outcome
from worker.protocol import Tensor


def request(body: object) -> LegacyRequest:
    return LegacyRequest("POST", "/api/inference", b"", Headers({}), json.dumps(body).encode())


def test_default_adapter_maps_model_and_inputs() -> None:
    adapter = JsonInferenceAdapter()
    mapped = adapter.to_cluster(request({"model": "digits", "inputs": [[0.5] * 8] * 8, "parameters": {"k": 1}}))
    assert mapped is not None
    assert mapped.model == "digits"
    assert mapped.parameters == {"k": 1}
    assert adapter.to_cluster(request({"text": "no inputs here"})) is None
    assert JsonInferenceAdapter(default_model="digits").to_cluster(request({"inputs": [1]})) is not None


def test_default_adapter_response_round_trips_through_local_outputs() -> None:
    adapter = JsonInferenceAdapter()
    logits = np.arange(20, dtype=np.float32).reshape(2, 10)
    outcome = Outcome("digits", "1", [Tensor("logits", "FP32", logits)], "node-1", "distributed", 1, 1.0)
    answer = adapter.to_response(outcome, request({}))
    body = json.loads(answer.body)
    assert body == {
        "model": "digits",
        "model_version": "1",
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [2, 10], "data": logits.ravel().tolist()}],
    }
    parsed = adapter.local_outputs(200, answer.body)
    assert parsed is not None
    np.testing.assert_array_equal(parsed["logits"], logits)
    assert adapter.local_outputs(500, answer.body) is None


def test_compare_outputs() -> None:
    a = {"logits": np.array([1.0, 2.0, 3.0])}
    assert compare_outputs(a, {"logits": np.array([1.0, 2.0, 3.00001])}) is None
    assert "differ by up to 0.5" in str(compare_outputs(a, {"logits": np.array([1.0, 2.5, 3.0])}))
    assert "values locally" in str(compare_outputs(a, {"logits": np.array([1.0, 2.0])}))
    assert "outputs differ" in str(compare_outputs(a, {"probs": np.array([1.0, 2.0, 3.0])}))
    assert compare_outputs({"t": np.array(["a", "b"])}, {"t": np.array([b"a", b"b"], dtype=object)}) is None
    assert compare_outputs({"t": np.array(["a", "b"])}, {"t": np.array([b"a", b"c"], dtype=object)}) is not None
