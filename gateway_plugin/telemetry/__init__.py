"""Observability of the gateway: Prometheus metrics, OpenTelemetry traces, request logs, `/stats`.

`Telemetry` builds every piece once per plugin instance from what is injected (a metrics
registry, a tracer provider) and hands the rest of the plugin three things: the dispatcher's
observer, the route hook, and the `/metrics` and `/stats` readers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from discovery.registry import NodeRegistry
from gateway_plugin.telemetry.asgi import RouteTelemetry
from gateway_plugin.telemetry.cluster import ClusterWatch, NodeReaders
from gateway_plugin.telemetry.metrics import GatewayMetrics
from gateway_plugin.telemetry.observer import NO_OBSERVER, DispatchObserver
from gateway_plugin.telemetry.recorder import GatewayTelemetry
from gateway_plugin.telemetry.stats import StatsWindow
from gateway_plugin.telemetry.tracing import GatewayTracing, gateway_tracer_provider

__all__ = ["NO_OBSERVER", "DispatchObserver", "NodeReaders", "Telemetry"]


class Telemetry:
    def __init__(
        self,
        node_registry: NodeRegistry,
        *,
        api_prefix: str,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        known_model: Callable[[str], bool] = lambda _: False,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # Tasks (when a queue exists) replace this with their queue's depth.
        self.queue_depth: Callable[[], int] = lambda: 0
        self.metrics = GatewayMetrics(
            self.registry,
            live_nodes=lambda: self.cluster.live(),
            queue_depth=lambda: self.queue_depth(),
            live_panic=lambda: self.cluster.panic(),
            listed_node=lambda node_id: self.cluster.lists(node_id),
        )
        self.tracing = GatewayTracing(gateway_tracer_provider(tracer_provider))
        self.stats = StatsWindow()
        self.cluster = ClusterWatch(node_registry, self.metrics, self.stats)
        self.observer = GatewayTelemetry(self.metrics, self.tracing, self.stats, known_model=known_model)
        self.route_hook = RouteTelemetry(self.observer, api_prefix=api_prefix)

    def cache_observer(self, models: Iterable[str]) -> Callable[[str, bool], None]:
        """`observe(model, hit)` for the response cache: its hit and miss counters per model.

        The cacheable models are a configured, bounded set; each starts at 0, so rates and hit
        ratios read right from the first scrape.
        """
        m = self.metrics
        for model in models:
            m.child(m.cache_hits, m.model_label(model))
            m.child(m.cache_misses, m.model_label(model))

        def observe(model: str, hit: bool) -> None:
            m.child(m.cache_hits if hit else m.cache_misses, m.model_label(model)).inc()

        return observe

    def render_metrics(self) -> tuple[bytes, str]:
        """The `/metrics` body and its content type."""
        return self.metrics.exposition.render()

    async def watch_event_loop(self) -> None:
        await self.observer.watch_event_loop()

    def flush(self) -> None:
        self.tracing.flush()
