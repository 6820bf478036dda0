"""The registry: the live set of nodes, fed by discovery sources, health probes and admins.

Sources call `reset(source, specs)` with everything they currently see (or `add`/`remove` one
node, as the admin API does); the registry works out the difference and publishes
`NodeAdded | NodeUpdated | NodeRemoved` to its subscribers (the balancer's pool). Probes call
`update(key, ...)`. Subscribers are called synchronously, in order, on the event loop; they must
not block.

Several sources may list the same URL: the node lives while any of them does. The first to list
it owns it (its spec wins); when the owner drops it, the next claimant takes it over.

Ids name nodes in `/nodes`, `PATCH /nodes/{id}` and metrics, so they are unique and reachable:
an id a source or a node gives that another node already has, or that the admin API could not
address (a `/`, a space), is refused with a warning and the node keeps its own (host:port).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import urlsplit

from discovery.node import ModelInfo, Node, NodeSpec, NodeStatus, valid_node_id

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


def _filtered(models: Mapping[str, ModelInfo], keep: frozenset[str] | None) -> Mapping[str, ModelInfo]:
    if keep is None:
        return models
    return MappingProxyType({name: info for name, info in models.items() if name in keep})


class NodeRegistry:
    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}
        self._claims: dict[str, dict[str, NodeSpec]] = {}  # source -> url -> the spec it lists
        self._subscribers: list[Subscriber] = []
        self._refused: set[tuple[str, str]] = set()  # (key, id) refusals already logged

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

    def _id_taken(self, node_id: str, key: str) -> bool:
        return any(node.node_id == node_id for other, node in self._nodes.items() if other != key)

    def _usable_id(self, wanted: str | None, key: str, source: str) -> bool:
        if wanted is None:
            return False
        why = (
            "which the admin API cannot address"
            if not valid_node_id(wanted)
            else "which another node has"
            if self._id_taken(wanted, key)
            else None
        )
        if why is None:
            return True
        if (key, wanted) not in self._refused:  # probes ask again every round: say it once
            self._refused.add((key, wanted))
            log.warning("node %s: %s gives it the id %r, %s; ignored", key, source, wanted, why)
        return False

    def _pass_on_id(self, freed: str, left: str | None = None) -> None:
        """A node whose source named the id a departed (or renamed) node `left` held takes it now."""
        heir = next((n for k, n in self._nodes.items() if n.spec.node_id == freed and k != left), None)
        if heir is not None and heir.node_id != freed:
            log.info("node %s (%s) takes the id %r, free now", heir.node_id, heir.key, freed)
            self._replace(heir.with_changes(node_id=freed))

    def _own_id(self, key: str) -> str:
        """host:port, made unique when two URLs share it (paths on one server)."""
        base = urlsplit(key).netloc
        candidate, n = base, 1
        while self._id_taken(candidate, key):
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def claimants(self, key: str) -> list[str]:
        """The sources that currently list `key`."""
        return [source for source, specs in self._claims.items() if key in specs]

    # ------------------------------------------------------------------ sources

    def reset(self, source: str, specs: Iterable[NodeSpec]) -> None:
        """Make the nodes of `source` exactly `specs`: add the new, remove the gone, keep the rest."""
        wanted = {spec.url: spec for spec in specs}
        before = self._claims.get(source, {})
        self._claims[source] = wanted
        for key in [key for key in before if key not in wanted]:
            self._reconcile(key)
        for key in wanted:
            self._reconcile(key)

    def add(self, source: str, spec: NodeSpec) -> Node:
        """List one more node for `source` (the admin API's POST)."""
        self._claims.setdefault(source, {})[spec.url] = spec
        self._reconcile(spec.url)
        return self._nodes[spec.url]

    def remove(self, source: str, key: str) -> None:
        """Stop listing `key` for `source`; the node goes when no other source lists it."""
        if self._claims.get(source, {}).pop(key, None) is not None:
            self._reconcile(key)

    def _reconcile(self, key: str) -> None:
        claims = [(source, specs[key]) for source, specs in self._claims.items() if key in specs]
        current = self._nodes.get(key)
        if not claims:
            self._refused = {pair for pair in self._refused if pair[0] != key}
            if current is not None:
                del self._nodes[key]
                log.info("node %s (%s) removed by %s", current.node_id, key, current.source)
                self._publish(NodeRemoved(current))
                self._pass_on_id(current.node_id)
            return
        if current is None:
            source, spec = claims[0]
            node_id = spec.node_id if self._usable_id(spec.node_id, key, source) else self._own_id(key)
            node = Node.from_spec(spec, source).with_changes(node_id=node_id)
            self._nodes[key] = node
            log.info("node %s (%s) added by %s", node.node_id, key, source)
            self._publish(NodeAdded(node))
            return
        owned = self._claims.get(current.source, {}).get(key)
        source, spec = (current.source, owned) if owned is not None else claims[0]
        if source != current.source or spec != current.spec:
            renamed = spec.node_id is not None and spec.node_id != current.node_id
            node_id = spec.node_id if renamed and self._usable_id(spec.node_id, key, source) else current.node_id
            self._replace(current.with_changes(source=source, spec=spec, node_id=node_id))

    # ------------------------------------------------------------------ probes and admins

    def update(self, key: str, **changes: object) -> Node | None:
        """Change fields of a known node (status, models, binary, node_id, last_error).

        `status` is what a probe saw: it is kept as `health` and shown as `status` unless an admin
        has set one by hand. `models` is what the node advertises; an admin's filter narrows it.
        """
        current = self._nodes.get(key)
        if current is None:
            return None
        wanted = changes.get("node_id")
        if wanted is not None and wanted != current.node_id and not self._usable_id(str(wanted), key, "its metadata"):
            # Two URLs of one server (localhost and 127.0.0.1) must not both answer to its id.
            del changes["node_id"]
        if "status" in changes:
            changes["health"] = changes["status"]
            if current.manual is not None:
                del changes["status"]
        if "models" in changes:
            advertised = changes["models"]
            if not isinstance(advertised, Mapping):
                raise TypeError("models must be a mapping of name to ModelInfo")
            changes["advertised"] = advertised
            changes["models"] = _filtered(advertised, current.model_filter)
        node = current.with_changes(**changes)
        if node != current:
            self._replace(node)
        return node

    def set_manual_status(self, key: str, status: NodeStatus | None) -> Node | None:
        """Hold the node at `status` whatever probes see; None lifts the hold (back to its health)."""
        current = self._nodes.get(key)
        if current is None:
            return None
        node = current.with_changes(manual=status, status=status if status is not None else current.health)
        if node != current:
            log.info("node %s set %s by hand", node.node_id, status.value if status else "back to its health")
            self._replace(node)
        return node

    def set_model_filter(self, key: str, names: Iterable[str] | None) -> Node | None:
        """Route only `names` (of what the node advertises) to this node; None routes all of them."""
        current = self._nodes.get(key)
        if current is None:
            return None
        keep = frozenset(names) if names is not None else None
        node = current.with_changes(model_filter=keep, models=_filtered(current.advertised, keep))
        if node != current:
            self._replace(node)
        return node

    def _replace(self, node: Node) -> None:
        before = self._nodes.get(node.key)
        self._nodes[node.key] = node
        self._publish(NodeUpdated(node))
        if before is not None and before.node_id != node.node_id:
            self._pass_on_id(before.node_id, node.key)  # renamed: its old id is free for whoever was refused it
