"""`least_loaded`: the node with the fewest requests in flight from this gateway; ties at random."""

from __future__ import annotations

import random
from collections.abc import Sequence

from balancer.strategies.base import InFlight
from discovery.node import Node

__all__ = ["LeastLoaded"]


class LeastLoaded:
    name = "least_loaded"

    def choose(self, model: str, candidates: Sequence[Node], in_flight: InFlight, rng: random.Random) -> Node:
        fewest = min(in_flight(node.key) for node in candidates)
        tied = [node for node in candidates if in_flight(node.key) == fewest]
        return tied[0] if len(tied) == 1 else rng.choice(tied)
