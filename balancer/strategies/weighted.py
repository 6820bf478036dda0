"""`weighted`: smooth weighted round robin (nginx's), over static or capacity weights.

A node's weight is its discovery weight (`NodeSpec.weight`, e.g. from a nodes file) times the
`capacity` it advertises, when it does. Each pick adds every candidate's weight to its running
score, takes the highest (ties at random) and subtracts the total from it: a node of weight 3
next to one of weight 1 is picked 3 times in 4, interleaved (a a b a), not in bursts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from balancer.strategies.base import PickContext, Signals
from discovery.node import Node

__all__ = ["MAX_WEIGHT", "Weighted", "node_weight"]


# As the admin API caps a weight. An infinite one made the scores NaN (inf - inf), no node tied for
# the best, and every pick raised: a 500 for each request.
MAX_WEIGHT = 1_000_000.0


def _bounded(value: float) -> float:
    """0 to MAX_WEIGHT; NaN reads as the default 1."""
    return 1.0 if math.isnan(value) else min(max(value, 0.0), MAX_WEIGHT)


def node_weight(node: Node, signals: Signals) -> float:
    try:
        capacity = float(signals.labels(node).get("capacity", 1.0))
    except ValueError:
        capacity = 1.0
    return _bounded(node.spec.weight) * _bounded(capacity)


class Weighted:
    name = "weighted"

    def __init__(self) -> None:
        self._scores: dict[str, dict[str, float]] = {}  # model -> node key -> running score

    def choose(self, ctx: PickContext, candidates: Sequence[Node], signals: Signals, rng: random.Random) -> Node:
        weights = {node.key: node_weight(node, signals) for node in candidates}
        total = sum(weights.values())
        if total <= 0:  # every weight is zero: nothing to prefer
            return rng.choice(list(candidates))
        previous = self._scores.get(ctx.model, {})
        scores = {key: previous.get(key, 0.0) + weight for key, weight in weights.items()}  # drops gone nodes
        best = max(scores.values())
        tied = [node for node in candidates if scores[node.key] == best]
        chosen = tied[0] if len(tied) == 1 else rng.choice(tied)
        scores[chosen.key] -= total
        self._scores[ctx.model] = scores
        return chosen
