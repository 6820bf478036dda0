"""Panic mode in the gateway's metrics: a live gauge per model and a counter of panic picks."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from balancer import EjectionPolicy
from discovery.node import ModelInfo
from discovery.registry import NodeRegistry
from gateway_plugin.telemetry import NodeReaders, Telemetry
from gateway_plugin.telemetry.cluster import ClusterWatch
from gateway_plugin.telemetry.metrics import OTHER, GatewayMetrics
from gateway_plugin.telemetry.stats import StatsWindow
from tests.fake_clock import FakeClock
from tests.unit.balancer.conftest import static_pool
from worker.config import TensorSpec
from worker.errors import NodeServerError

SPEC = (TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),)
INFO = ModelInfo("digits", "1", "onnx", SPEC, SPEC)
BOOM = NodeServerError("500 boom", node_url="http://x", status=500)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_panic_gauge_and_counter_follow_the_pool() -> None:
    clock = FakeClock()
    ejection = EjectionPolicy(consecutive_failures=1, base_ejection_s=5, max_ejection_s=10)
    registry, pool, urls = static_pool(2, ejection=ejection, clock=clock, models={"digits": INFO})
    telemetry = Telemetry(registry, api_prefix="/api", registry=CollectorRegistry())
    telemetry.cluster.readers = NodeReaders(panic=pool.panic_states)
    pool.add_panic_listener(telemetry.cluster.panic_pick)
    prom = telemetry.registry

    telemetry.render_metrics()  # the first scrape makes the counter's series, at 0
    assert _value(prom, "distinfer_gateway_panic_mode", model="digits") == 0
    assert _value(prom, "distinfer_gateway_panic_picks_total", model="digits") == 0
    for _ in urls:  # one system failure each trips both breakers
        lease = pool.pick("digits")
        assert lease is not None
        lease.report(0.001, BOOM)
        lease.done()
    assert _value(prom, "distinfer_gateway_panic_mode", model="digits") == 1
    for _ in range(3):
        lease = pool.pick("digits")
        assert lease is not None
        assert lease.panic
        lease.done()
    assert _value(prom, "distinfer_gateway_panic_picks_total", model="digits") == 3
    clock.advance(5)  # the ejections end: trials are admitted again
    assert _value(prom, "distinfer_gateway_panic_mode", model="digits") == 0
    lease = pool.pick("digits")
    assert lease is not None
    assert not lease.panic
    assert _value(prom, "distinfer_gateway_panic_picks_total", model="digits") == 3


def test_models_past_the_label_budget_fold_into_other_in_panic_if_any_is() -> None:
    metrics = GatewayMetrics(CollectorRegistry(), model_limit=1)
    panic = {"a": False, "b": False, "c": True}
    watch = ClusterWatch(NodeRegistry(), metrics, StatsWindow(), NodeReaders(panic=lambda: panic))
    assert watch.panic() == [("a", False), (OTHER, True)]
    watch.panic_pick("c")
    assert _value(metrics.registry, "distinfer_gateway_panic_picks_total", model=OTHER) == 1
