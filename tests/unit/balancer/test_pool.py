"""The node pool over a real registry, and the retry policy."""

from __future__ import annotations

import random
from collections import Counter
from types import MappingProxyType

import pytest

from balancer.pool import NodePool, UnknownStrategy
from balancer.retry import RetryPolicy
from balancer.strategies import default_strategies
from discovery.node import ModelInfo, NodeSpec, NodeStatus
from discovery.registry import NodeRegistry
from worker.config import TensorSpec
from worker.errors import NodeCallError, NodeRejected, NodeServerError, NodeTimeout, NodeUnreachable


def info(name: str) -> ModelInfo:
    return ModelInfo(
        name=name,
        version="1",
        platform="onnxruntime_onnx",
        inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),),
        outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 2)),),
    )


def url(name: str) -> str:
    return f"http://{name}:8000"


def add(registry: NodeRegistry, name: str, status: NodeStatus, *models: str, source: str = "static") -> str:
    """Register `name` from `source` (keeping that source's other nodes) and set its state."""
    kept = [node.spec for node in registry.nodes() if node.source == source]
    registry.reset(source, [*kept, NodeSpec(url(name))])
    registry.update(url(name), status=status, models=MappingProxyType({model: info(model) for model in models}))
    return url(name)


def make_pool(registry: NodeRegistry, *, default: str = "round_robin", seed: int = 0) -> NodePool:
    return NodePool(registry, default_strategies(), default_strategy=default, rng=random.Random(seed))


@pytest.fixture
def registry() -> NodeRegistry:
    return NodeRegistry()


def test_only_online_nodes_serving_the_model_are_candidates(registry: NodeRegistry) -> None:
    pool = make_pool(registry)
    a = add(registry, "a", NodeStatus.ONLINE, "digits", "other")
    add(registry, "b", NodeStatus.ONLINE, "other")
    add(registry, "c", NodeStatus.BUSY, "digits")
    add(registry, "d", NodeStatus.OFFLINE, "digits")
    add(registry, "e", NodeStatus.ERROR, "digits")
    f = add(registry, "f", NodeStatus.ONLINE, "digits")
    assert {node.key for node in pool.candidates("digits")} == {a, f}
    assert {node.key for node in pool.candidates("other")} == {a, url("b")}
    assert pool.candidates("missing") == ()
    picked = Counter()
    for _ in range(40):
        lease = pool.pick("digits")
        assert lease is not None
        picked[lease.node.key] += 1
        lease.done()
    assert picked == {a: 20, f: 20}
    assert pool.pick("missing") is None


def test_pick_counts_in_flight_and_done_releases_once(registry: NodeRegistry) -> None:
    pool = make_pool(registry)
    a = add(registry, "a", NodeStatus.ONLINE, "digits")
    first = pool.pick("digits")
    second = pool.pick("digits")
    assert first is not None
    assert second is not None
    assert first.node.key == second.node.key == a
    assert pool.in_flight(a) == 2
    first.done()
    assert pool.in_flight(a) == 1
    first.done()  # idempotent: must not release the second lease's slot
    first.done()
    assert pool.in_flight(a) == 1
    second.done()
    assert pool.in_flight(a) == 0
    second.done()
    assert pool.in_flight(a) == 0


def test_least_loaded_in_the_pool_spreads_held_leases(registry: NodeRegistry) -> None:
    pool = make_pool(registry, default="least_loaded", seed=3)
    keys = {add(registry, name, NodeStatus.ONLINE, "digits") for name in ("a", "b", "c")}
    leases = [pool.pick("digits") for _ in range(9)]
    assert all(lease is not None for lease in leases)
    assert {key: pool.in_flight(key) for key in keys} == dict.fromkeys(keys, 3)
    held = [lease for lease in leases if lease is not None]
    for lease in held:
        if lease.node.key == url("b"):
            lease.done()
    assert pool.in_flight(url("b")) == 0
    nxt = pool.pick("digits", strategy="least_loaded")
    assert nxt is not None
    assert nxt.node.key == url("b")


def test_exclude_skips_nodes(registry: NodeRegistry) -> None:
    pool = make_pool(registry, seed=5)
    a = add(registry, "a", NodeStatus.ONLINE, "digits")
    b = add(registry, "b", NodeStatus.ONLINE, "digits")
    for strategy in ("round_robin", "least_loaded"):
        for _ in range(10):
            lease = pool.pick("digits", strategy=strategy, exclude=frozenset({a}))
            assert lease is not None
            assert lease.node.key == b
            lease.done()
        assert pool.pick("digits", strategy=strategy, exclude=frozenset({a, b})) is None
    assert pool.in_flight(a) == pool.in_flight(b) == 0


def test_a_node_going_offline_stops_being_picked_at_once(registry: NodeRegistry) -> None:
    pool = make_pool(registry, seed=1)
    a = add(registry, "a", NodeStatus.ONLINE, "digits")
    b = add(registry, "b", NodeStatus.ONLINE, "digits")
    seen = {lease.node.key for lease in (pool.pick("digits") for _ in range(4)) if lease is not None}
    assert seen == {a, b}
    registry.update(a, status=NodeStatus.OFFLINE)
    for _ in range(10):
        lease = pool.pick("digits")
        assert lease is not None
        assert lease.node.key == b
    registry.update(a, status=NodeStatus.ONLINE)
    seen = {lease.node.key for lease in (pool.pick("digits") for _ in range(4)) if lease is not None}
    assert seen == {a, b}


def test_report_unreachable_takes_the_node_out(registry: NodeRegistry) -> None:
    pool = make_pool(registry)
    a = add(registry, "a", NodeStatus.ONLINE, "digits")
    pool.report_unreachable(a, "connection refused")
    node = registry.get(a)
    assert node is not None
    assert node.status is NodeStatus.OFFLINE
    assert node.last_error == "connection refused"
    assert pool.pick("digits") is None


def test_removed_node_is_not_picked_and_its_lease_still_releases(registry: NodeRegistry) -> None:
    pool = make_pool(registry)
    a = add(registry, "a", NodeStatus.ONLINE, "digits")
    b = add(registry, "b", NodeStatus.ONLINE, "digits", source="consul")
    lease = pool.pick("digits", exclude=frozenset({b}))
    assert lease is not None
    assert lease.node.key == a
    registry.reset("static", [])
    assert registry.get(a) is None
    assert pool.in_flight(a) == 1
    for _ in range(5):
        other = pool.pick("digits")
        assert other is not None
        assert other.node.key == b
        other.done()
    lease.done()
    assert pool.in_flight(a) == 0


def test_strategy_names_are_checked(registry: NodeRegistry) -> None:
    pool = make_pool(registry, default="least_loaded")
    add(registry, "a", NodeStatus.ONLINE, "digits")
    assert pool.check_strategy(None) == "least_loaded"
    assert pool.check_strategy("round_robin") == "round_robin"
    assert pool.strategy_names == [
        "capability",
        "latency",
        "least_loaded",
        "model_affinity",
        "round_robin",
        "weighted",
    ]
    with pytest.raises(UnknownStrategy):
        pool.check_strategy("fastest")
    with pytest.raises(UnknownStrategy):
        pool.pick("digits", strategy="fastest")
    with pytest.raises(UnknownStrategy):
        NodePool(NodeRegistry(), default_strategies(), default_strategy="fastest")


def test_knows_and_any_online(registry: NodeRegistry) -> None:
    pool = make_pool(registry)
    assert not pool.knows("digits")
    assert not pool.any_online()
    a = add(registry, "a", NodeStatus.OFFLINE, "digits")
    assert pool.knows("digits")
    assert not pool.knows("other")
    assert not pool.any_online()
    assert pool.pick("digits") is None
    add(registry, "b", NodeStatus.ONLINE, "other")
    assert pool.any_online()
    assert pool.pick("digits") is None
    registry.update(a, status=NodeStatus.ONLINE)
    lease = pool.pick("digits")
    assert lease is not None
    assert lease.node.key == a


# ---------------------------------------------------------------- retry policy


RETRYABLE = [
    NodeUnreachable("refused", node_url="http://a:1"),
    NodeTimeout("slow", node_url="http://a:1"),
    NodeServerError("boom", node_url="http://a:1", status=503),
    NodeServerError("boom", node_url="http://a:1", status=500),
]


@pytest.mark.parametrize("error", RETRYABLE, ids=lambda error: type(error).__name__)
@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
def test_retryable_errors_retry_until_max_attempts(error: NodeCallError, max_attempts: int) -> None:
    policy = RetryPolicy(max_attempts=max_attempts)
    decisions = [policy.should_retry(error, made) for made in range(1, max_attempts + 3)]
    assert decisions == [made < max_attempts for made in range(1, max_attempts + 3)]


@pytest.mark.parametrize("status", [400, 404, 413, 422])
@pytest.mark.parametrize("max_attempts", [1, 3, 10])
def test_rejections_never_retry(status: int, max_attempts: int) -> None:
    policy = RetryPolicy(max_attempts=max_attempts)
    error = NodeRejected("bad input", node_url="http://a:1", status=status)
    assert error.status == status
    assert not any(policy.should_retry(error, made) for made in range(max_attempts + 2))
