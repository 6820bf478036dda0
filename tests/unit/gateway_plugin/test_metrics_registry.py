"""The plugin on a host's registry, as prometheus_client's global REGISTRY is built (`auto_describe`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from discovery.node import NodeSpec, NodeStatus
from discovery.registry import NodeRegistry
from gateway_plugin import DistributedInference
from gateway_plugin.settings import DiscoverySettings, FlagSettings, Settings
from gateway_plugin.telemetry import Telemetry
from gateway_plugin.telemetry.metrics import LabelBudget


def test_the_plugin_builds_and_scrapes_on_an_auto_describe_registry() -> None:
    """Regression: such a registry collects a collector without `describe` when it is registered, and
    the live collector then read the cluster before the plugin had built it (AttributeError)."""
    registry = CollectorRegistry(auto_describe=True)  # what prometheus_client.REGISTRY is
    settings = Settings(flags=FlagSettings(enabled=True), discovery=DiscoverySettings(nodes=["http://127.0.0.1:9"]))
    distributed = DistributedInference(settings=settings, metrics_registry=registry)
    assert distributed.metrics_registry is registry
    text = generate_latest(registry).decode()
    assert "# TYPE distinfer_gateway_node_up gauge" in text
    assert "distinfer_gateway_queue_depth 0.0" in text
    assert "# TYPE distinfer_gateway_panic_mode gauge" in text


def test_nodes_past_the_label_budget_share_one_series_per_gauge() -> None:
    """Regression: once node churn had spent the label budget, every new node was `other` and the
    live gauges wrote `distinfer_gateway_node_up{node="other"}` once per node (an invalid exposition)."""
    registry = NodeRegistry()
    telemetry = Telemetry(registry, api_prefix="/api/v1/distributed")
    telemetry.metrics.node_label = LabelBudget(3)
    for generation in range(3):  # three rollouts of two pods each, a scrape after each
        specs = [NodeSpec(f"http://10.0.{generation}.{i}:8001", node_id=f"node-{generation}-{i}") for i in range(2)]
        registry.reset("dns", specs)
        telemetry.render_metrics()
    registry.update("http://10.0.2.0:8001", status=NodeStatus.ONLINE)
    text = telemetry.render_metrics()[0].decode()
    series = [line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("distinfer_gateway_node_")]
    assert len(series) == len(set(series))
    assert 'distinfer_gateway_node_up{node="other"} 1.0' in text  # up while any node behind the label is
    assert 'distinfer_gateway_node_in_flight_requests{node="other"} 0.0' in text
