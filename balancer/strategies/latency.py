"""`latency`: power of two choices over peak-EWMA latency x in-flight (Finagle's and Linkerd's approach).

Two distinct candidates are drawn at random and the one with the lower cost wins; cost is the
node's peak EWMA of observed latency times (requests in flight + 1), relative to the in-flight
count that latency was observed at (`NodePool.latency_cost` says why). Two random draws, not the
global minimum, so traffic does not herd onto the single fastest node; and a buffer band on top:
costs within `band` of each other count as a tie, broken at random, so measurement noise between
equally good nodes does not make one of them the favourite.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from balancer.strategies.base import PickContext, Signals
from discovery.node import Node

__all__ = ["Latency"]


class Latency:
    name = "latency"

    def __init__(self, *, band: float = 0.1) -> None:
        if not 0 <= band < 1:
            raise ValueError("band must be in [0, 1)")
        self._band = band

    def choose(self, ctx: PickContext, candidates: Sequence[Node], signals: Signals, rng: random.Random) -> Node:
        if len(candidates) == 1:
            return candidates[0]
        first, second = rng.sample(list(candidates), 2)
        cost_a, cost_b = signals.latency_cost(first.key), signals.latency_cost(second.key)
        if abs(cost_a - cost_b) <= self._band * max(cost_a, cost_b):
            return first if rng.random() < 0.5 else second
        return first if cost_a < cost_b else second
