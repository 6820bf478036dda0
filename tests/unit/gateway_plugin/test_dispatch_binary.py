"""With binary tensors to nodes switched off, what JSON cannot carry (NaN, infinity) still goes binary."""

from __future__ import annotations

import random
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from balancer.pool import NodePool
from balancer.retry import RetryPolicy
from balancer.strategies import default_strategies
from discovery.node import ModelInfo, NodeSpec, NodeStatus
from discovery.registry import NodeRegistry
from gateway_plugin.dispatch import Dispatcher, InferenceCall
from worker.config import TensorSpec
from worker.protocol import DecodedResponse, Tensor

SPEC = (TensorSpec(name="x", datatype="FP32", shape=(-1, 2)),)
INFO = ModelInfo("m", "1", "onnx", SPEC, SPEC)


class BinaryRecordingClient:
    def __init__(self) -> None:
        self.binary: list[bool] = []

    async def infer(self, url: str, model: str, inputs: Any, *, binary: bool = True, **_: Any) -> DecodedResponse:
        self.binary.append(binary)
        return DecodedResponse(model, "1", None, {}, [Tensor.of("x", np.ones((1, 2), np.float32))])


def _dispatcher(client: BinaryRecordingClient, *, node_binary: bool) -> Dispatcher:
    registry = NodeRegistry()
    pool = NodePool(registry, default_strategies(), default_strategy="round_robin", rng=random.Random(0))
    registry.reset("static", [NodeSpec("http://n0:1", node_id="n0")])
    registry.update("http://n0:1", status=NodeStatus.ONLINE, models=MappingProxyType({"m": INFO}), binary=node_binary)
    return Dispatcher(pool, client, retry=RetryPolicy(max_attempts=1), binary=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "node_binary", "sent_binary"),
    [(1.0, True, False), (np.nan, True, True), (-np.inf, True, True), (np.nan, False, False)],
)
async def test_non_finite_inputs_go_binary_when_the_node_can_read_it(
    value: float, node_binary: bool, sent_binary: bool
) -> None:
    """Regression: a pipeline stage's NaN output, sent on as JSON with DISTINFER_BINARY_TO_NODES=false,
    was refused by the next node (JSON has no NaN); finite data stays JSON as configured."""
    client = BinaryRecordingClient()
    call = InferenceCall(
        model="m", inputs=[Tensor.of("x", np.array([[value, 1.0]], np.float32))], request_id="r", timeout_s=2.0
    )
    await _dispatcher(client, node_binary=node_binary).infer(call)
    assert client.binary == [sent_binary]
