"""`least_loaded`: the node with the fewest requests in flight from this gateway; ties at random."""

from __future__ import annotations

import random
from collections.abc import Sequence

from balancer.strategies.base import PickContext, Signals, pick_fewest
from discovery.node import Node

__all__ = ["LeastLoaded"]


class LeastLoaded:
    name = "least_loaded"

    def choose(self, ctx: PickContext, candidates: Sequence[Node], signals: Signals, rng: random.Random) -> Node:
        return pick_fewest(candidates, signals, rng)
