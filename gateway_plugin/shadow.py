"""Shadow mode bookkeeping: what the cluster answered beside the original handler, and its tasks.

`ShadowStats` is the one object compat writes and dashboards read (`snapshot()` for `/stats`,
the counters for metrics): shadow comparisons, and in serve mode how many legacy-path requests
the cluster answered and how many fell back to the original handler. `BackgroundWork` owns the
shadow calls: bounded in number (when full, a shadow copy is skipped and counted, never queued),
cancelled when the lifespan ends, so shadow work can never slow, fail or outlive the app.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

__all__ = ["BackgroundWork", "Divergence", "ShadowStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Divergence:
    at: float
    request_id: str
    model: str
    detail: str


def _percentiles(values: deque[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 3),
        "p95": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 3),
    }


class ShadowStats:
    """Counters of shadow comparisons; recent latencies and divergences are bounded."""

    def __init__(self, *, keep: int = 256, keep_divergences: int = 20) -> None:
        self.compared = 0
        self.matched = 0
        self.diverged = 0
        self.cluster_errors = 0
        self.skipped = 0
        self.served = 0  # serve mode: legacy requests the cluster answered
        self.fallbacks = 0  # serve mode: legacy requests handed back to the original handler
        self.local_ms: deque[float] = deque(maxlen=keep)
        self.cluster_ms: deque[float] = deque(maxlen=keep)
        self.divergences: deque[Divergence] = deque(maxlen=keep_divergences)

    def record(
        self, *, request_id: str, model: str, local_ms: float, cluster_ms: float, divergence: str | None
    ) -> None:
        self.compared += 1
        self.local_ms.append(local_ms)
        self.cluster_ms.append(cluster_ms)
        if divergence is None:
            self.matched += 1
        else:
            self.diverged += 1
            self.divergences.append(Divergence(time.time(), request_id, model, divergence))

    def record_error(self, *, request_id: str, model: str, detail: str) -> None:
        self.cluster_errors += 1
        self.divergences.append(Divergence(time.time(), request_id, model, f"cluster failed: {detail}"))

    def record_skipped(self) -> None:
        self.skipped += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "served": self.served,
            "fallbacks": self.fallbacks,
            "compared": self.compared,
            "matched": self.matched,
            "diverged": self.diverged,
            "cluster_errors": self.cluster_errors,
            "skipped": self.skipped,
            "match_rate": round(self.matched / self.compared, 4) if self.compared else None,
            "latency_ms": {"local": _percentiles(self.local_ms), "cluster": _percentiles(self.cluster_ms)},
            "recent_divergences": [
                {"at": d.at, "request_id": d.request_id, "model": d.model, "detail": d.detail} for d in self.divergences
            ],
        }


class BackgroundWork:
    """At most `limit` tasks at once, all cancelled by `close()`; `spawn` never waits."""

    def __init__(self, limit: int = 64) -> None:
        self._limit = limit
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = False

    def open(self) -> None:
        self._open = True

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> bool:
        if not self._open or len(self._tasks) >= self._limit:
            work.close()
            return False
        task = asyncio.create_task(work, name=f"distinfer-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return True

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        self._open = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
