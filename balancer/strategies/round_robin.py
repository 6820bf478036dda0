"""`round_robin`: each model's healthy nodes in turn."""

from __future__ import annotations

import random
from collections.abc import Sequence

from balancer.strategies.base import PickContext, Signals
from discovery.node import Node

__all__ = ["RoundRobin"]


class RoundRobin:
    name = "round_robin"

    def __init__(self) -> None:
        self._next: dict[str, int] = {}  # one turn per model: bounded by the models the cluster serves

    def choose(self, ctx: PickContext, candidates: Sequence[Node], signals: Signals, rng: random.Random) -> Node:
        # Start each model at a random offset so that several gateways do not move in lockstep.
        turn = self._next.get(ctx.model)
        if turn is None:
            turn = rng.randrange(len(candidates))
        if not ctx.again:  # a hedge or retry that took the turn sent every next request to the slow node
            self._next[ctx.model] = turn + 1
        return candidates[turn % len(candidates)]
