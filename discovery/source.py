"""What every discovery source is: a named watcher that keeps its share of the registry current.

A source's `run(registry)` lists what it sees with `registry.reset(name, specs)` every time that
changes, until it is cancelled (the gateway's lifespan owns the task). `synced` is set once its
first listing is in, so the lifespan can wait for it before serving. A source never raises out
of `run` for an outage of what it watches: it keeps the last good listing and tries again.
"""

from __future__ import annotations

import asyncio
import random
from typing import Protocol, runtime_checkable

from discovery.registry import NodeRegistry

__all__ = ["Backoff", "Source"]


@runtime_checkable
class Source(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def synced(self) -> asyncio.Event: ...

    async def run(self, registry: NodeRegistry) -> None: ...


class Backoff:
    """Exponential back-off with jitter (half to all of the ceiling), reset on success."""

    def __init__(self, *, base_s: float = 0.1, cap_s: float = 10.0, rng: random.Random | None = None) -> None:
        self._base = base_s
        self._cap = cap_s
        self._rng = rng or random.Random()
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self._cap, self._base * 2 ** min(self.failures, 30))
        self.failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)
