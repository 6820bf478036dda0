"""The task queue: priorities with aging, admission control (429 + Retry-After), depth and wait times.

The order itself is kept by the store (one sorted set in Redis, a heap in memory) under
`queue_score`, so that every replica takes work in the same order; this object decides what may
enter, stamps the score, and measures: how many wait, for how long, and how fast work drains.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway_plugin.errors import TooManyRequests
from gateway_plugin.tasks.model import TaskRecord, queue_score
from gateway_plugin.tasks.store import TaskStore

__all__ = ["QueueFull", "QueueStats", "TaskQueue"]

_WINDOW_S = 60.0  # claims counted for the drain rate
_KEPT_WAITS = 1024


class QueueFull(TooManyRequests):
    code, title = "queue_full", "Task queue full"


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A snapshot for `/stats` and dashboards; wait times are measured on this replica."""

    depth: int
    max_size: int
    by_priority: dict[str, int] = field(default_factory=dict)
    head_wait_s: float = 0.0  # how long the task that runs next has waited so far
    mean_wait_s: float | None = None  # over the recently started tasks
    p95_wait_s: float | None = None
    started_per_s: float = 0.0  # drain rate over the last minute

    def as_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "max_size": self.max_size,
            "by_priority": self.by_priority,
            "head_wait_s": round(self.head_wait_s, 3),
            "mean_wait_s": None if self.mean_wait_s is None else round(self.mean_wait_s, 3),
            "p95_wait_s": None if self.p95_wait_s is None else round(self.p95_wait_s, 3),
            "started_per_s": round(self.started_per_s, 3),
        }


class TaskQueue:
    def __init__(
        self, store: TaskStore, *, max_size: int, aging_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self.max_size = max_size
        self.aging_s = aging_s
        self._clock = clock
        self._waits: deque[float] = deque(maxlen=_KEPT_WAITS)
        self._claims: deque[float] = deque()  # when tasks started, within the window

    def score(self, priority: str, enqueued_at: float) -> float:
        return queue_score(priority, enqueued_at, self.aging_s)

    async def push(self, record: TaskRecord) -> None:
        """Admit a pending task, or raise QueueFull (429) with a Retry-After from the drain rate."""
        if not await self._store.add(record, max_pending=self.max_size):
            raise QueueFull(
                f"the task queue is full ({self.max_size} tasks may wait; on the memory store, "
                "DISTINFER_TASK_MAX_PENDING_BYTES of their requests; on Redis, its maxmemory); retry later",
                retry_after_s=self.retry_after_s(),
            )

    async def pop(self, *, lease_s: float, worker: str) -> TaskRecord | None:
        now = self._clock()
        record = await self._store.claim(now=now, lease_until=now + lease_s, worker=worker)
        if record is not None:
            self._waits.append(max(0.0, now - record.created_at))
            self._claims.append(now)
        return record

    def _rate(self, now: float) -> float:
        while self._claims and self._claims[0] < now - _WINDOW_S:
            self._claims.popleft()
        if len(self._claims) < 2:
            return 0.0
        span = max(now - self._claims[0], 1e-3)
        return len(self._claims) / span

    def retry_after_s(self) -> int:
        """Seconds until a place is likely free: one claim at the recent drain rate (1..60; 5 when unknown)."""
        rate = self._rate(self._clock())
        return 5 if rate <= 0 else min(60, max(1, math.ceil(1 / rate)))

    async def stats(self) -> QueueStats:
        now = self._clock()
        snapshot = await self._store.pending()
        waits = sorted(self._waits)
        head_wait = 0.0 if snapshot.head_created_at is None else max(0.0, now - snapshot.head_created_at)
        return QueueStats(
            depth=snapshot.depth,
            max_size=self.max_size,
            by_priority=snapshot.by_priority,
            head_wait_s=head_wait,
            mean_wait_s=sum(waits) / len(waits) if waits else None,
            p95_wait_s=waits[min(len(waits) - 1, int(len(waits) * 0.95))] if waits else None,
            started_per_s=self._rate(now),
        )
