"""The registry: the live set of nodes, fed by discovery sources and health probes.

Sources call `reset(source, specs)` with everything they currently see; the registry works out
the difference and publishes `NodeAdded | NodeUpdated | NodeRemoved` to its subscribers (the
balancer's pool). Probes call `update(key, ...)`. Subscribers are called synchronously, in
order, on the event loop; they must not block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from discovery.node import Node, NodeSpec

__all__ = ["NodeAdded", "NodeEvent", "NodeRegistry", "NodeRemoved", "NodeUpdated"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeAdded:
    node: Node


@dataclass(frozen=True, slots=True)
class NodeUpdated:
    node: Node


@dataclass(frozen=True, slots=True)
class NodeRemoved:
    node: Node


NodeEvent = NodeAdded | NodeUpdated | NodeRemoved
Subscriber = Callable[[NodeEvent], None]


class NodeRegistry:
    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        """Receive every later event; call `nodes()` first for the current set."""
        self._subscribers.append(subscriber)

    def _publish(self, event: NodeEvent) -> None:
        for subscriber in self._subscribers:
            subscriber(event)

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def get(self, key: str) -> Node | None:
        return self._nodes.get(key)

    def find(self, node_id: str) -> Node | None:
        return next((node for node in self._nodes.values() if node.node_id == node_id), None)

    def reset(self, source: str, specs: Iterable[NodeSpec]) -> None:
        """Make the nodes of `source` exactly `specs`: add the new, remove the gone, keep the rest."""
        wanted = {spec.url: spec for spec in specs}
        for key, node in list(self._nodes.items()):
            if node.source == source and key not in wanted:
                del self._nodes[key]
                log.info("node %s (%s) removed by %s", node.node_id, key, source)
                self._publish(NodeRemoved(node))
        for key, spec in wanted.items():
            current = self._nodes.get(key)
            if current is None:
                node = Node.from_spec(spec, source)
                self._nodes[key] = node
                log.info("node %s (%s) added by %s", node.node_id, key, source)
                self._publish(NodeAdded(node))
            elif current.source == source and current.spec != spec:
                self._replace(current.with_changes(spec=spec, node_id=spec.node_id or current.node_id))

    def update(self, key: str, **changes: object) -> Node | None:
        """Change fields of a known node (status, models, binary, node_id, last_error)."""
        current = self._nodes.get(key)
        if current is None:
            return None
        node = current.with_changes(**changes)
        if node != current:
            self._replace(node)
        return node

    def _replace(self, node: Node) -> None:
        self._nodes[node.key] = node
        self._publish(NodeUpdated(node))
