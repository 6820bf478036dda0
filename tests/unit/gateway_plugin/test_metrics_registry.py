"""The plugin on a host's registry, as prometheus_client's global REGISTRY is built (`auto_describe`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from gateway_plugin import DistributedInference
from gateway_plugin.settings import DiscoverySettings, FlagSettings, Settings


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
