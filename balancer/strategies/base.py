"""The interface every balancing strategy implements; one strategy per file.

A strategy sees the request (`PickContext`), the nodes it may choose from (healthy, serving the
model, breaker closed or on trial) and read-only `Signals` the pool keeps per node. It is
synchronous and never waits: it runs on the request path. Ties are broken with the injected
`rng`, never by registration order.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from discovery.node import Node

__all__ = ["PickContext", "Restricting", "Signals", "Strategy", "pick_fewest"]


@dataclass(frozen=True, slots=True)
class PickContext:
    model: str
    affinity_key: str | None = None  # a session id; model_affinity hashes the model without one
    again: bool = False  # a retry or hedge of a request already sent somewhere: it takes no turn


class Signals(Protocol):
    """What the pool knows about each node, by node key."""

    def in_flight(self, key: str) -> int: ...

    def latency_cost(self, key: str) -> float:
        """Peak EWMA latency (s), plus a typical request's time per extra request in flight; 0 if never seen, idle."""
        ...

    def labels(self, node: Node) -> Mapping[str, str]:
        """The node's labels: its discovery labels over what it advertises about its hardware."""
        ...


class Strategy(Protocol):
    name: str

    def choose(self, ctx: PickContext, candidates: Sequence[Node], signals: Signals, rng: random.Random) -> Node | None:
        """One of `candidates` (never empty); None only when none of them may serve the request."""
        ...


@runtime_checkable
class Restricting(Protocol):
    """A strategy that rules some nodes out for a request whatever their health (`capability`).

    The pool decides panic and spill-over among the eligible nodes only: an ejected GPU node is the
    least bad choice for a cuda model, a healthy CPU node is none at all.
    """

    def eligible(self, ctx: PickContext, nodes: Sequence[Node], signals: Signals) -> Sequence[Node]: ...


def pick_fewest(candidates: Sequence[Node], signals: Signals, rng: random.Random) -> Node:
    """The node with the fewest requests in flight; ties at random."""
    fewest = min(signals.in_flight(node.key) for node in candidates)
    tied = [node for node in candidates if signals.in_flight(node.key) == fewest]
    return tied[0] if len(tied) == 1 else rng.choice(tied)
