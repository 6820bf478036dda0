"""The cluster as telemetry sees it: ejections from registry events, and each node's live state.

`ClusterWatch` follows the registry's events (synchronously, as the registry requires): a node
that leaves `online` is an ejection; a removed node is forgotten by the stats window. `live()`
is what the scrape-time collector and `/stats` read: status, in-flight, breaker and trust, the
last two from optional readers wired by the plugin (the balancer owns them).
"""

from __future__ import annotations

from collections.abc import Callable

from discovery.node import Node, NodeStatus
from discovery.registry import NodeAdded, NodeEvent, NodeRegistry, NodeRemoved
from gateway_plugin.telemetry.metrics import GatewayMetrics, LiveNode
from gateway_plugin.telemetry.stats import StatsWindow

__all__ = ["ClusterWatch", "NodeReaders"]


class NodeReaders:
    """Optional per-node readers: in-flight count, breaker state name, trust score."""

    def __init__(
        self,
        in_flight: Callable[[str], int] = lambda _: 0,
        breaker: Callable[[str], str | None] = lambda _: None,
        trust: Callable[[str], float | None] = lambda _: None,
    ) -> None:
        self.in_flight = in_flight
        self.breaker = breaker
        self.trust = trust


class ClusterWatch:
    def __init__(
        self, registry: NodeRegistry, metrics: GatewayMetrics, stats: StatsWindow, readers: NodeReaders | None = None
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._stats = stats
        self.readers = readers or NodeReaders()
        self._status: dict[str, NodeStatus] = {node.key: node.status for node in registry.nodes()}
        registry.subscribe(self._on_event)

    def _on_event(self, event: NodeEvent) -> None:
        node = event.node
        if isinstance(event, NodeRemoved):
            self._status.pop(node.key, None)
            self._stats.forget(node.node_id)
            return
        before = None if isinstance(event, NodeAdded) else self._status.get(node.key)
        self._status[node.key] = node.status
        if before is NodeStatus.ONLINE and node.status in (NodeStatus.OFFLINE, NodeStatus.ERROR):
            self._metrics.child(self._metrics.ejections, self._metrics.node_label(node.node_id)).inc()

    def nodes(self) -> list[Node]:
        return sorted(self._registry.nodes(), key=lambda n: n.node_id)

    def live(self) -> list[LiveNode]:
        readers = self.readers
        return [
            LiveNode(
                node_id=self._metrics.node_label(node.node_id),
                up=node.status is NodeStatus.ONLINE,
                in_flight=readers.in_flight(node.key),
                breaker=readers.breaker(node.key),
                trust=readers.trust(node.key),
            )
            for node in self.nodes()
        ]
