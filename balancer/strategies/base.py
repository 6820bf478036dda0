"""The interface every balancing strategy implements; one strategy per file."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from discovery.node import Node

__all__ = ["InFlight", "Strategy"]

InFlight = Callable[[str], int]


class Strategy(Protocol):
    """Chooses one of `candidates` (never empty, all healthy, all serving the model).

    Synchronous and non-blocking: it runs on the request path. Ties are broken with `rng`, never
    by registration order.
    """

    name: str

    def choose(self, model: str, candidates: Sequence[Node], in_flight: InFlight, rng: random.Random) -> Node: ...
