"""`majority_vote` reads class labels wherever the gateway knows a model from, sharded models too."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from discovery.node import ModelInfo
from gateway_plugin.api.parallel import ParallelRequest, run_parallel
from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.settings import Settings
from worker.config import TensorSpec
from worker.protocol import Limits, Tensor

LABELS = ("zero", "one", "two")


def _info(name: str) -> ModelInfo:
    inputs = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
    outputs = (TensorSpec(name="logits", datatype="FP32", shape=(-1, 3)),)
    return ModelInfo(name, "1", "onnx", inputs, outputs, 0, LABELS)


async def test_a_sharded_model_votes_with_its_labels() -> None:
    """Regression: labels came from the catalog only: a sharded model voted '2' where the ordinary
    model that agreed with it voted 'two', and the vote split."""

    async def infer(call: InferenceCall) -> Outcome:
        logits = Tensor.of("logits", np.array([[0.1, 0.2, 0.9]], np.float32))
        return Outcome(call.model, "1", [logits], "n", "distributed", 1, 1.0)

    catalog, sharded = {"plain": _info("plain")}, {"mlp": _info("mlp")}
    svc: Any = SimpleNamespace(
        settings=Settings(_env_file=None),  # type: ignore[call-arg]
        limits=Limits(),
        catalog=SimpleNamespace(info=catalog.get),
        sharded=SimpleNamespace(info=sharded.get),
        pool=SimpleNamespace(any_online=lambda: True, knows=lambda m: True, check_strategy=lambda s: s or "latency"),
        dispatcher=SimpleNamespace(infer=infer),
    )
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}
    request = {"models": ["plain", "mlp"], "aggregation": "majority_vote", "inputs": [tensor]}
    body = ParallelRequest.model_validate(request)
    answer = await run_parallel(svc, body, "r")
    assert answer["label"] == "two"
    assert answer["votes"] == {"two": 2}
