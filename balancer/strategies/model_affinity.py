"""`model_affinity`: rendezvous (highest random weight) hashing on a session key, else on the model.

Every candidate gets a score hash(key, node); the highest wins. The same key keeps hitting the
same node while that node is a candidate; when a node leaves only the keys it held move (about
1/N of them), spread over the rest, and they come back when it returns. Node weights scale the
share a node gets (weighted rendezvous hashing: score = -weight / ln(u)).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from balancer.strategies.base import PickContext, Signals
from discovery.node import Node

__all__ = ["SESSION_PARAMETERS", "ModelAffinity", "session_key"]

# Request parameters that name a session, in the order they are looked up.
SESSION_PARAMETERS = ("session_id", "session", "affinity_key")


def session_key(parameters: Mapping[str, Any]) -> str | None:
    if not parameters:  # most requests: nothing to look up
        return None
    for name in SESSION_PARAMETERS:
        value = parameters.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return None


def _unit(key: str, node_key: str) -> float:
    digest = hashlib.blake2b(f"{key}\x00{node_key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1): ln() is defined


class ModelAffinity:
    name = "model_affinity"

    def choose(self, ctx: PickContext, candidates: Sequence[Node], signals: Signals, rng: random.Random) -> Node:
        key = ctx.affinity_key or f"model:{ctx.model}"
        best: Node | None = None
        best_score = -math.inf
        for node in candidates:
            weight = node.spec.weight if node.spec.weight > 0 else 1e-9
            score = -weight / math.log(_unit(key, node.key))
            if score > best_score:
                best, best_score = node, score
        assert best is not None  # candidates is never empty
        return best
