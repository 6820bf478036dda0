"""Nodes that leave: their series and label-budget places go back; their ejection is counted once.

Regression: labels were admitted for good, so a fleet whose pods come back under new names (every
rollout in Kubernetes) kept every departed pod's series and, once the budget was spent, reported
every later node as `other`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.trace import NoOpTracerProvider
from prometheus_client import CollectorRegistry

from balancer.breaker import BreakerState
from discovery.node import ModelInfo, NodeSpec, NodeStatus
from discovery.registry import NodeRegistry
from gateway_plugin import DistributedInference
from gateway_plugin.settings import BalancerSettings, Settings
from gateway_plugin.telemetry.cluster import ClusterWatch
from gateway_plugin.telemetry.metrics import OTHER, GatewayMetrics, LabelBudget
from gateway_plugin.telemetry.recorder import GatewayTelemetry
from gateway_plugin.telemetry.stats import StatsWindow
from gateway_plugin.telemetry.tracing import GatewayTracing
from tests.fake_clock import FakeClock
from worker.errors import NodeUnreachable

GRACE_S = 60.0


class _Fleet:
    """The real registry, metrics, cluster watch and call observer, with a clock the test moves."""

    def __init__(self, node_limit: int = 2) -> None:
        self.clock = FakeClock()
        self.registry = NodeRegistry()
        self.metrics = GatewayMetrics(
            CollectorRegistry(),
            node_limit=node_limit,
            listed_node=lambda node_id: self.watch.lists(node_id),
            departed_series_s=GRACE_S,
            clock=self.clock,
        )
        self.watch = ClusterWatch(self.registry, self.metrics, StatsWindow())
        self.observer = GatewayTelemetry(self.metrics, GatewayTracing(NoOpTracerProvider()))

    def list(self, *names: str) -> None:
        self.registry.reset("dns", [NodeSpec(f"http://{name}:8001", node_id=name) for name in names])

    def attempt(self, node_id: str) -> None:
        with self.observer.attempt("m", node_id, 1):
            pass

    def attempts(self, node: str) -> float | None:
        labels = {"node": node, "outcome": "ok"}
        return self.metrics.registry.get_sample_value("distinfer_gateway_attempts_total", labels)

    def later(self, seconds: float) -> None:
        self.clock.now += seconds
        self.metrics.expire_departed()


def test_a_departed_nodes_series_stay_through_the_grace_then_go_and_free_the_label() -> None:
    fleet = _Fleet(node_limit=2)
    fleet.list("pod-a", "pod-b")
    fleet.attempt("pod-a")
    fleet.attempt("pod-b")
    fleet.list("pod-c")  # a rollout: both pods replaced
    fleet.attempt("pod-a")  # an answer that was on its way when pod-a left
    fleet.later(GRACE_S - 1)
    assert fleet.attempts("pod-a") == 2  # still there for the scrapes after its end
    fleet.attempt("pod-c")
    assert fleet.attempts(OTHER) == 1  # the budget is still spent meanwhile

    fleet.later(1)
    assert fleet.attempts("pod-a") is None
    assert fleet.attempts("pod-b") is None
    exposition = fleet.metrics.exposition.render()[0].decode()
    assert "pod-a" not in exposition
    assert "pod-b" not in exposition
    fleet.list("pod-c", "pod-d")
    fleet.attempt("pod-d")
    assert fleet.attempts("pod-d") == 1  # the freed places go to newcomers
    fleet.attempt("pod-a")  # a name seen again later starts a fresh series
    assert fleet.attempts("pod-a") == 1


def test_a_node_back_within_the_grace_keeps_its_series() -> None:
    fleet = _Fleet()
    fleet.list("pod-a")
    fleet.attempt("pod-a")
    fleet.list()
    fleet.later(GRACE_S / 2)
    fleet.list("pod-a")  # a flap: discovery lost it for a moment
    fleet.later(GRACE_S * 2)
    fleet.attempt("pod-a")
    assert fleet.attempts("pod-a") == 2


def test_an_id_still_listed_under_another_address_is_not_departed() -> None:
    fleet = _Fleet()
    fleet.registry.reset("dns", [NodeSpec("http://10.0.0.1:8001", node_id="pod-a")])
    fleet.registry.add("admin", NodeSpec("http://10.0.0.2:8001", node_id="pod-a"))
    fleet.attempt("pod-a")
    fleet.registry.reset("dns", [])
    fleet.later(GRACE_S * 2)
    assert fleet.attempts("pod-a") == 1


def test_a_node_renamed_by_its_probe_departs_under_its_old_id() -> None:
    fleet = _Fleet()
    fleet.list("pod-a")
    fleet.attempt("pod-a")
    fleet.registry.update("http://pod-a:8001", node_id="node-7")  # the node's own id, learnt by the probe
    fleet.later(GRACE_S)
    assert fleet.attempts("pod-a") is None


def test_buffered_updates_of_a_removed_series_are_dropped_with_it() -> None:
    fleet = _Fleet()
    fleet.list("pod-a")
    fleet.attempt("pod-a")
    buffered = fleet.metrics._buffer
    assert buffered is not None
    before = len(buffered._children)
    fleet.list()
    fleet.later(GRACE_S)
    assert len(buffered._children) < before  # no longer flushed: the series is gone
    fleet.metrics.flush()
    assert fleet.attempts("pod-a") is None


def test_the_budget_gives_a_released_place_to_the_next_newcomer() -> None:
    budget = LabelBudget(1)
    assert [budget("a"), budget("b")] == ["a", OTHER]
    budget.release("a")
    assert "a" not in budget
    assert [budget("b"), budget("a")] == ["b", OTHER]


async def test_the_event_loop_watch_expires_departed_nodes() -> None:
    fleet = _Fleet()
    fleet.list("pod-a")
    fleet.attempt("pod-a")
    fleet.list()
    fleet.clock.now += GRACE_S
    watch = asyncio.create_task(fleet.observer.watch_event_loop(interval_s=0.01))
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if fleet.attempts("pod-a") is None:
                break
    finally:
        watch.cancel()
    assert fleet.attempts("pod-a") is None


def test_a_late_answer_after_the_series_went_departs_again() -> None:
    """Regression (review): bookkeeping that waits for a slow client to read its answer can come
    after the node's series were removed; it brought the label back for good."""
    fleet = _Fleet(node_limit=2)
    fleet.list("pod-a")
    fleet.attempt("pod-a")
    fleet.list("pod-b")
    fleet.later(GRACE_S)
    fleet.attempt("pod-a")  # the late one
    assert fleet.attempts("pod-a") == 1
    fleet.later(GRACE_S)
    assert fleet.attempts("pod-a") is None
    fleet.list("pod-b", "pod-c")
    fleet.attempt("pod-c")
    assert fleet.attempts("pod-c") == 1


def test_multiprocess_files_keep_their_series_and_the_budget_still_bounds_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (review): prometheus_client cannot remove series from multiprocess files, yet the
    labels were given back, so every rollout added series without bound."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    fleet = _Fleet(node_limit=2)
    for rollout in range(3):
        pods = [f"pod-{rollout}-{i}" for i in range(2)]
        fleet.list(*pods)
        for pod in pods:
            fleet.attempt(pod)
        fleet.later(GRACE_S)
    labels = {pod for pod in (f"pod-{r}-{i}" for r in range(3) for i in range(2)) if pod in fleet.metrics.node_label}
    assert labels == {"pod-0-0", "pod-0-1"}  # the first two kept their places; later pods are `other`


async def test_a_failing_expiry_does_not_stop_the_event_loop_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = _Fleet()
    expiries = 0

    def broken() -> None:
        nonlocal expiries
        expiries += 1
        raise RuntimeError("dictionary changed size during iteration")

    monkeypatch.setattr(fleet.metrics, "expire_departed", broken)
    watch = asyncio.create_task(fleet.observer.watch_event_loop(interval_s=0.01))
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if expiries >= 3:
                break
    finally:
        watch.cancel()
    assert expiries >= 3


@pytest.mark.parametrize(("consecutive", "in_flight"), [(1, 1), (5, 5)])
def test_a_node_that_dies_is_one_ejection_though_probe_and_breaker_both_see_it(
    consecutive: int, in_flight: int
) -> None:
    """Regression (review): a refused connection both trips the breaker and takes the node offline,
    and each counted an ejection."""
    settings = Settings(balancer=BalancerSettings(eject_consecutive_failures=consecutive))
    distributed = DistributedInference(settings=settings, metrics_registry=CollectorRegistry())
    node = distributed.registry.add("test", NodeSpec(url="http://10.0.0.9:8000", node_id="n1"))
    info = ModelInfo("m", "1", "onnx", (), ())
    distributed.registry.update(node.key, status=NodeStatus.ONLINE, models={"m": info})
    leases = [distributed.pool.pick("m") for _ in range(in_flight)]  # in flight when the node died
    for lease in leases:
        assert lease is not None
        lease.report(0.01, NodeUnreachable("connection refused", node_url=node.url))
        lease.done()
    assert distributed.pool.breaker(node.key).state is BreakerState.OPEN
    assert distributed.registry.get(node.key).status is NodeStatus.OFFLINE  # type: ignore[union-attr]
    ejections = distributed.metrics_registry.get_sample_value("distinfer_gateway_node_ejections_total", {"node": "n1"})
    assert ejections == 1
