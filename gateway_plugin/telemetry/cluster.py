"""The cluster as telemetry sees it: ejections from registry events, and each node's live state.

`ClusterWatch` follows the registry's events (synchronously, as the registry requires): a node
that leaves `online` is an ejection, and so is a breaker trip (`breaker_tripped`, from the pool);
a removed node is forgotten by the stats window, and once no listed node has its id, the metrics
drop its series after a grace period. `live()`
is what the scrape-time collector and `/stats` read: up, in-flight, breaker, trust and state, all
but `up` from optional readers wired by the plugin (the balancer owns them); `panic()` is which
models are in panic mode, and `panic_pick` counts each pick made in it (the pool calls it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from discovery.node import Node, NodeStatus
from discovery.registry import NodeAdded, NodeEvent, NodeRegistry, NodeRemoved
from gateway_plugin.telemetry.metrics import GatewayMetrics, LiveNode
from gateway_plugin.telemetry.stats import StatsWindow

__all__ = ["ClusterWatch", "NodeReaders"]


class NodeReaders:
    """Optional readers: per node its in-flight count, breaker state name, trust score and state as
    users see it (without a balancer: its probed state); per model panic."""

    def __init__(
        self,
        in_flight: Callable[[str], int] = lambda _: 0,
        breaker: Callable[[str], str | None] = lambda _: None,
        trust: Callable[[str], float | None] = lambda _: None,
        panic: Callable[[], Mapping[str, bool]] = dict,
        status: Callable[[Node], str] = lambda node: node.status.value,
    ) -> None:
        self.in_flight = in_flight
        self.breaker = breaker
        self.trust = trust
        self.panic = panic
        self.status = status


class ClusterWatch:
    def __init__(
        self, registry: NodeRegistry, metrics: GatewayMetrics, stats: StatsWindow, readers: NodeReaders | None = None
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._stats = stats
        self.readers = readers or NodeReaders()
        self._status: dict[str, NodeStatus] = {node.key: node.status for node in registry.nodes()}
        self._ids: dict[str, str] = {node.key: node.node_id for node in registry.nodes()}  # key -> node id
        registry.subscribe(self._on_event)

    def _on_event(self, event: NodeEvent) -> None:
        node = event.node
        self._follow_id(node, removed=isinstance(event, NodeRemoved))
        if isinstance(event, NodeRemoved):
            self._status.pop(node.key, None)
            self._stats.forget(node.node_id)
            return
        before = None if isinstance(event, NodeAdded) else self._status.get(node.key)
        self._status[node.key] = node.status
        left = before is NodeStatus.ONLINE and node.status in (NodeStatus.OFFLINE, NodeStatus.ERROR)
        if left and self.readers.breaker(node.key) != "open":  # an open breaker counted it already
            self._metrics.child(self._metrics.ejections, self._metrics.node_label(node.node_id)).inc()

    def _follow_id(self, node: Node, *, removed: bool) -> None:
        """Tell the metrics when an id stops naming any listed node (removed or renamed), or names one again."""
        before = self._ids.pop(node.key, None) if removed else self._ids.get(node.key)
        if not removed:
            self._ids[node.key] = node.node_id
            self._metrics.node_returned(node.node_id)
        if before is not None and before != (None if removed else node.node_id) and before not in self._ids.values():
            self._metrics.node_departed(before)

    def lists(self, node_id: str) -> bool:
        """Whether a node with this id is in the registry now."""
        return node_id in self._ids.values()

    def nodes(self) -> list[Node]:
        return sorted(self._registry.nodes(), key=lambda n: n.node_id)

    def panic(self) -> list[tuple[str, bool]]:
        """(model label, in panic) per model; models folded into one label are in panic if any is.

        Each model's panic-pick counter is made here too, at 0, so that the first panic shows as
        an increase rather than as a series appearing out of nowhere.
        """
        m = self._metrics
        folded: dict[str, bool] = {}
        for model, active in self.readers.panic().items():
            label = m.model_label(model)
            folded[label] = folded.get(label, False) or active
            m.child(m.panic_picks, label)
        return sorted(folded.items())

    def breaker_tripped(self, key: str) -> None:
        """The balancer ejected a node (its breaker tripped): an ejection, as a probe's is."""
        node = self._registry.get(key)
        if node is not None and node.status is NodeStatus.ONLINE:  # one that left `online` counted already
            self._metrics.child(self._metrics.ejections, self._metrics.node_label(node.node_id)).inc()

    def panic_pick(self, model: str) -> None:
        """One pick made in panic mode for `model`."""
        self._metrics.child(self._metrics.panic_picks, self._metrics.model_label(model)).inc()

    def live(self) -> list[LiveNode]:
        readers = self.readers
        return [
            LiveNode(
                node_id=self._metrics.node_label(node.node_id),
                up=node.status is NodeStatus.ONLINE,
                in_flight=readers.in_flight(node.key),
                breaker=readers.breaker(node.key),
                trust=readers.trust(node.key),
                status=readers.status(node),
            )
            for node in self.nodes()
        ]
