"""The pool: which healthy nodes serve which model, requests in flight, and `pick()`.

It follows the registry's events and rebuilds its per-model candidate lists only when
membership or health changes, so `pick()` stays cheap and never waits.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from balancer.strategies import Strategy
from discovery.node import Node, NodeStatus
from discovery.registry import NodeEvent, NodeRegistry, NodeRemoved

__all__ = ["Lease", "NodePool", "UnknownStrategy"]


class UnknownStrategy(ValueError):
    pass


@dataclass(slots=True)
class Lease:
    """A picked node; call `done()` once the attempt is over to release its in-flight slot."""

    node: Node
    _pool: NodePool
    _released: bool = field(default=False)

    def done(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self.node.key)


class NodePool:
    def __init__(
        self,
        registry: NodeRegistry,
        strategies: Mapping[str, Strategy],
        *,
        default_strategy: str,
        rng: random.Random | None = None,
    ) -> None:
        if default_strategy not in strategies:
            raise UnknownStrategy(f"unknown default strategy {default_strategy!r}")
        self._registry = registry
        self._strategies = dict(strategies)
        self.default_strategy = default_strategy
        self._rng = rng or random.Random()
        self._in_flight: dict[str, int] = {}
        self._candidates: dict[str, tuple[Node, ...]] | None = None
        registry.subscribe(self._on_event)

    @property
    def strategy_names(self) -> list[str]:
        return sorted(self._strategies)

    def _on_event(self, event: NodeEvent) -> None:
        self._candidates = None  # rebuilt on the next pick
        if isinstance(event, NodeRemoved) and not self._in_flight.get(event.node.key):
            self._in_flight.pop(event.node.key, None)

    def _by_model(self) -> dict[str, tuple[Node, ...]]:
        if self._candidates is None:
            table: dict[str, list[Node]] = {}
            for node in self._registry.nodes():
                if node.status is NodeStatus.ONLINE:
                    for model in node.models:
                        table.setdefault(model, []).append(node)
            self._candidates = {model: tuple(nodes) for model, nodes in table.items()}
        return self._candidates

    def candidates(self, model: str) -> tuple[Node, ...]:
        """Healthy nodes that serve `model`."""
        return self._by_model().get(model, ())

    def knows(self, model: str) -> bool:
        """Whether any node, healthy or not, has ever listed the model."""
        return any(node.serves(model) for node in self._registry.nodes())

    def any_online(self) -> bool:
        return any(node.status is NodeStatus.ONLINE for node in self._registry.nodes())

    def in_flight(self, key: str) -> int:
        return self._in_flight.get(key, 0)

    def check_strategy(self, name: str | None) -> str:
        chosen = name or self.default_strategy
        if chosen not in self._strategies:
            raise UnknownStrategy(f"unknown strategy {chosen!r}; available: {self.strategy_names}")
        return chosen

    def pick(self, model: str, *, strategy: str | None = None, exclude: frozenset[str] = frozenset()) -> Lease | None:
        """A lease on a healthy node for `model`, avoiding `exclude`d keys; None when there is none."""
        strategy_obj = self._strategies[self.check_strategy(strategy)]
        nodes = self.candidates(model)
        if exclude:
            nodes = tuple(node for node in nodes if node.key not in exclude)
        if not nodes:
            return None
        node = strategy_obj.choose(model, nodes, self.in_flight, self._rng)
        self._in_flight[node.key] = self._in_flight.get(node.key, 0) + 1
        return Lease(node, self)

    def _release(self, key: str) -> None:
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def report_unreachable(self, key: str, reason: str) -> None:
        """Passive health: a node that refuses connections is taken out until a probe brings it back."""
        self._registry.update(key, status=NodeStatus.OFFLINE, last_error=reason)
