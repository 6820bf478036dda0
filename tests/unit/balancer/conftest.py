"""Shared pieces for balancer tests: a fake clock, fake pool signals, node records, and a small v2 server.

The v2 server is real (aiohttp on loopback) and reached by the real NodeClient; the clock and the
signals are fakes of the pool's own injected collaborators, so strategies and state machines can
be tested alone and deterministically.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import pytest
from aiohttp import web

from balancer.outlier import EjectionPolicy
from balancer.pool import NodePool, PoolConfig
from balancer.strategies import default_strategies
from balancer.trust import TrustLedger, TrustPolicy
from discovery.node import ModelInfo, Node, NodeSpec, NodeStatus
from discovery.registry import NodeRegistry
from tests.fake_clock import FakeClock
from worker.config import TensorSpec

INFO = ModelInfo(
    name="digits",
    version="1",
    platform="onnxruntime_onnx",
    inputs=(TensorSpec(name="image", datatype="FP32", shape=(-1, 1, 8, 8)),),
    outputs=(TensorSpec(name="logits", datatype="FP32", shape=(-1, 10)),),
    max_batch_size=256,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class FakeSignals:
    """What the pool would tell a strategy: in-flight counts, latency costs and labels, by node key."""

    loads: dict[str, int] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    node_labels: dict[str, Mapping[str, str]] = field(default_factory=dict)

    def in_flight(self, key: str) -> int:
        return self.loads.get(key, 0)

    def latency_cost(self, key: str) -> float:
        return self.costs.get(key, 0.0)

    def labels(self, node: Node) -> Mapping[str, str]:
        return {**node.spec.labels, **self.node_labels.get(node.key, {})}


def make_nodes(count: int, *, weights: Sequence[float] | None = None) -> list[Node]:
    """`count` online nodes serving digits, on distinct loopback addresses, with optional weights."""
    nodes = []
    for index in range(count):
        weight = weights[index] if weights is not None else 1.0
        spec = NodeSpec(url=f"http://127.0.0.{index + 1}:8000", node_id=f"n{index}", weight=weight)
        node = Node.from_spec(spec, "static").with_changes(
            status=NodeStatus.ONLINE, models=MappingProxyType({"digits": INFO})
        )
        nodes.append(node)
    return nodes


class V2Node:
    def __init__(self) -> None:
        self.models = {"digits"}
        self.version = "1"  # every model's
        self.ready = True
        self.index_calls = 0
        self.health_calls = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2", self.server)
        app.router.add_get("/v2/health/ready", self.health)
        app.router.add_post("/v2/repository/index", self.index)
        app.router.add_get("/v2/models/{m}", self.metadata)
        return app

    async def server(self, _: web.Request) -> web.Response:
        return web.json_response({"name": "fake", "version": "1", "extensions": [], "node_id": "v2-fake"})

    async def health(self, _: web.Request) -> web.Response:
        self.health_calls += 1
        return web.Response(status=200 if self.ready else 503)

    async def index(self, _: web.Request) -> web.Response:
        self.index_calls += 1
        return web.json_response([{"name": m, "version": self.version, "state": "READY"} for m in sorted(self.models)])

    async def metadata(self, request: web.Request) -> web.Response:
        name = request.match_info["m"]
        if name not in self.models:
            return web.json_response({"error": f"unknown model {name}"}, status=404)
        tensor = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        return web.json_response(
            {
                "name": name,
                "versions": [self.version],
                "platform": "onnxruntime_onnx",
                "inputs": tensor,
                "outputs": tensor,
            }
        )


@pytest.fixture
async def served() -> AsyncIterator[tuple[V2Node, str]]:
    node = V2Node()
    runner = web.AppRunner(node.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield node, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


def static_pool(
    count: int,
    *,
    ejection: EjectionPolicy,
    clock: Callable[[], float] | None = None,
    models: Mapping[str, ModelInfo] | None = None,
    **config: object,
) -> tuple[NodeRegistry, NodePool, list[str]]:
    """A round-robin pool over `count` static nodes, all online with `models` (digits by default).

    With a `clock`, the pool and its trust ledger run on it; the keys are `http://n{i}:8000`.
    """
    registry = NodeRegistry()
    timing: dict[str, object] = {} if clock is None else {"clock": clock, "trust": TrustLedger(TrustPolicy(), clock)}
    pool = NodePool(
        registry,
        default_strategies(),
        default_strategy="round_robin",
        rng=random.Random(0),
        config=PoolConfig(ejection=ejection, **config),  # type: ignore[arg-type]
        **timing,  # type: ignore[arg-type]
    )
    keys = [f"http://n{index}:8000" for index in range(count)]
    registry.reset("static", [NodeSpec(key, node_id=f"n{index}") for index, key in enumerate(keys)])
    served = MappingProxyType(dict(models or {"digits": INFO}))
    for key in keys:
        registry.update(key, status=NodeStatus.ONLINE, models=served)
    return registry, pool, keys
