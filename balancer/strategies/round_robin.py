"""`round_robin`: each model's healthy nodes in turn."""

from __future__ import annotations

import random
from collections.abc import Sequence

from balancer.strategies.base import InFlight
from discovery.node import Node

__all__ = ["RoundRobin"]


class RoundRobin:
    name = "round_robin"

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def choose(self, model: str, candidates: Sequence[Node], in_flight: InFlight, rng: random.Random) -> Node:
        # Start each model at a random offset so that several gateways do not move in lockstep.
        turn = self._next.get(model)
        if turn is None:
            turn = rng.randrange(len(candidates))
        self._next[model] = turn + 1
        return candidates[turn % len(candidates)]
