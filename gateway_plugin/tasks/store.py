"""Where tasks live: the `TaskStore` protocol and the in-memory store (one gateway, bounded, with TTL).

A store keeps the records and the pending order (by `queue_score`) together, so admission,
claiming and cancelling are each one atomic step, in memory as in Redis (`redis_store`).
The memory store keeps at most `max_tasks` records: finished ones expire `ttl_s` after they
finish, and the oldest finished ones go first when room is needed; pending and running records
are never dropped, so a full store refuses new work instead (429).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from gateway_plugin.errors import PayloadTooLarge
from gateway_plugin.tasks.model import PRIORITY_RANK, TaskRecord, TaskStatus

__all__ = ["MemoryTaskStore", "PendingSnapshot", "TaskStore"]


@dataclass(frozen=True, slots=True)
class PendingSnapshot:
    depth: int
    by_priority: dict[str, int] = field(default_factory=dict)
    head_created_at: float | None = None  # when the task that runs next was submitted


class TaskStore(Protocol):
    async def add(self, record: TaskRecord, *, max_pending: int) -> bool:
        """Store a pending task; False (nothing stored) when `max_pending` tasks already wait."""

    async def claim(self, *, now: float, lease_until: float, worker: str) -> TaskRecord | None:
        """The lowest-score pending task, now running (attempts + 1); None when none waits."""

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record as the API shows it; a store may leave the request out (only `claim` needs it)."""

    async def find(self, *, status: TaskStatus | None, owner: str | None, limit: int) -> list[TaskRecord]:
        """Newest first."""

    async def finish(
        self,
        task_id: str,
        status: TaskStatus,
        *,
        now: float,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """Record the end of a running task; False when it is no longer running (cancelled meanwhile)."""

    async def cancel(self, task_id: str, *, now: float) -> TaskStatus | None:
        """Cancel a pending or running task; the status it had (None: unknown task)."""

    async def requeue(self, task_id: str) -> bool:
        """A running task back to pending, in its old place (its gateway is stopping): one more handover."""

    async def renew(self, task_ids: Iterable[str], *, lease_until: float) -> None: ...

    async def reclaim_expired(self, *, now: float) -> list[str]:
        """Running tasks whose lease ran out (their gateway died), back to pending."""

    async def statuses(self, task_ids: Iterable[str]) -> Mapping[str, TaskStatus | None]: ...

    async def pending(self) -> PendingSnapshot: ...

    async def close(self) -> None: ...


class MemoryTaskStore:
    """One gateway's tasks, in this process. Everything it holds is bounded: records by `max_tasks`,
    the requests of pending and running tasks (each up to the body cap) by `max_pending_bytes`."""

    def __init__(self, *, max_tasks: int, ttl_s: float, max_pending_bytes: int | None = None) -> None:
        self._max_tasks = max_tasks
        self._ttl_s = ttl_s
        self._max_bytes = max_pending_bytes
        self._held_bytes = 0  # `size` of the records whose request is still held
        self._records: dict[str, TaskRecord] = {}
        self._heap: list[tuple[float, int, str]] = []  # (score, sequence, id); stale entries skipped
        self._sequence = 0
        self._pending: set[str] = set()
        self._expiry: list[tuple[float, str]] = []  # (expires_at, id) of finished tasks

    def _push(self, record: TaskRecord) -> None:
        self._sequence += 1
        heapq.heappush(self._heap, (record.score, self._sequence, record.task_id))
        self._pending.add(record.task_id)

    def _finish(self, record: TaskRecord, status: TaskStatus, now: float) -> None:
        record.status = status
        record.finished_at = now
        record.request = {}  # no longer needed, and it may be the largest part of the record
        self._held_bytes -= record.size
        record.size = 0
        self._pending.discard(record.task_id)
        heapq.heappush(self._expiry, (now + self._ttl_s, record.task_id))

    def purge(self, now: float) -> None:
        """Drop finished records whose time is up."""
        while self._expiry and self._expiry[0][0] <= now:
            _, task_id = heapq.heappop(self._expiry)
            record = self._records.get(task_id)
            if record is not None and record.status.finished:
                del self._records[task_id]

    def _make_room(self, now: float) -> bool:
        self.purge(now)
        while len(self._records) >= self._max_tasks and self._expiry:
            _, task_id = heapq.heappop(self._expiry)  # soonest to expire = finished longest ago
            record = self._records.get(task_id)
            if record is not None and record.status.finished:
                del self._records[task_id]
        return len(self._records) < self._max_tasks

    async def add(self, record: TaskRecord, *, max_pending: int) -> bool:
        if len(self._pending) >= max_pending or not self._make_room(record.created_at):
            return False
        if self._max_bytes is not None and record.size > self._max_bytes:  # it would never fit: not a 429
            raise PayloadTooLarge(
                f"this task's request ({record.size} bytes) is over the {self._max_bytes} bytes the task queue "
                "holds (DISTINFER_TASK_MAX_PENDING_BYTES); send it synchronously, or in smaller tasks"
            )
        if self._max_bytes is not None and self._held_bytes + record.size > self._max_bytes:
            return False  # Regression (audit): 1,000 batch tasks of 15 MB each would have taken ~150 GB
        self._records[record.task_id] = replace(record)
        self._held_bytes += record.size
        self._push(record)
        return True

    @property
    def held_bytes(self) -> int:
        """Bytes (as submitted) of the requests held for pending and running tasks."""
        return self._held_bytes

    async def claim(self, *, now: float, lease_until: float, worker: str) -> TaskRecord | None:
        while self._heap:
            _, _, task_id = heapq.heappop(self._heap)
            record = self._records.get(task_id)
            if record is None or record.status is not TaskStatus.PENDING or task_id not in self._pending:
                continue
            self._pending.discard(task_id)
            record.status = TaskStatus.RUNNING
            record.started_at = now
            record.attempts += 1
            record.worker = worker
            return replace(record)
        return None

    async def get(self, task_id: str) -> TaskRecord | None:
        record = self._records.get(task_id)
        return None if record is None else replace(record)

    async def find(self, *, status: TaskStatus | None, owner: str | None, limit: int) -> list[TaskRecord]:
        found = [replace(r) for r in self._records.values() if r.matches(status=status, owner=owner)]
        found.sort(key=lambda r: r.created_at, reverse=True)
        return found[:limit]

    async def finish(
        self,
        task_id: str,
        status: TaskStatus,
        *,
        now: float,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        record = self._records.get(task_id)
        if record is None or record.status is not TaskStatus.RUNNING:
            return False
        record.result, record.error = result, error
        self._finish(record, status, now)
        return True

    async def cancel(self, task_id: str, *, now: float) -> TaskStatus | None:
        record = self._records.get(task_id)
        if record is None:
            return None
        before = record.status
        if not before.finished:
            self._finish(record, TaskStatus.CANCELLED, now)
        if len(self._heap) > 2 * len(self._pending) + 64:
            # Cancelled tasks leave stale heap entries; rebuild before they outnumber the live ones.
            self._heap = [entry for entry in self._heap if entry[2] in self._pending]
            heapq.heapify(self._heap)
        return before

    async def requeue(self, task_id: str) -> bool:
        record = self._records.get(task_id)
        if record is None or record.status is not TaskStatus.RUNNING:
            return False
        record.status, record.started_at, record.worker = TaskStatus.PENDING, None, None
        record.handovers += 1
        self._push(record)
        return True

    async def renew(self, task_ids: Iterable[str], *, lease_until: float) -> None:
        return None  # one process: its running tasks die with it, nothing to hand over

    async def reclaim_expired(self, *, now: float) -> list[str]:
        self.purge(now)
        return []

    async def statuses(self, task_ids: Iterable[str]) -> Mapping[str, TaskStatus | None]:
        return {i: (r.status if (r := self._records.get(i)) else None) for i in task_ids}

    async def pending(self) -> PendingSnapshot:
        waiting = [self._records[i] for i in self._pending]
        by_priority = {name: 0 for name in PRIORITY_RANK}
        for record in waiting:
            by_priority[record.priority] += 1
        head = min(waiting, key=lambda r: r.score, default=None)
        return PendingSnapshot(len(waiting), by_priority, None if head is None else head.created_at)

    async def close(self) -> None:
        return None
