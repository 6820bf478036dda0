"""A task as the store keeps it, who may see it, and how it reads in the API (CONTRACT §4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = ["ANONYMOUS", "PRIORITY_RANK", "Caller", "TaskRecord", "TaskStatus", "queue_score"]

# high before normal before low; the rank also sets how much waiting a task needs to catch up.
PRIORITY_RANK: dict[str, int] = {"high": 0, "normal": 1, "low": 2}


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: tasks are visible to their submitter (`subject`), and to everyone to an admin."""

    subject: str
    admin: bool = False

    def may_see(self, owner: str) -> bool:
        return self.admin or owner == self.subject


ANONYMOUS = Caller("anonymous")


def queue_score(priority: str, enqueued_at: float, aging_s: float) -> float:
    """The order tasks leave the queue, lowest first: arrival time, pushed back `aging_s` per rank.

    FIFO within a priority; a `high` task overtakes a `normal` one that arrived less than `aging_s`
    earlier, and never one that has waited longer than that, so `low` cannot starve under a
    sustained stream of `high` (it waits at most `2 * aging_s` behind newer work). One number per
    task, so a single sorted set in Redis orders every replica's queue the same way.
    """
    return enqueued_at + PRIORITY_RANK[priority] * aging_s


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class TaskRecord:
    task_id: str
    kind: str
    request: dict[str, Any]
    priority: str
    owner: str
    created_at: float
    score: float
    status: TaskStatus = TaskStatus.PENDING
    attempts: int = 0  # starts, however each ended
    # Starts a stopping gateway gave back (SIGTERM, a rolling update): not the task's fault, so not
    # counted towards MAX_ATTEMPTS. Internal: the API shows `attempts`.
    handovers: int = 0
    # The submitter's trace context (W3C traceparent/tracestate), so the task's spans and node calls
    # join the trace of the request that queued it. Internal: not in the API view.
    trace: dict[str, str] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    worker: str | None = field(default=None)
    # Bytes of the request as submitted, for the memory store's budget. Internal: not in the API view.
    size: int = 0

    def matches(self, *, status: TaskStatus | None, owner: str | None) -> bool:
        """Whether a listing filtered by `status` and `owner` (None: any) includes this task."""
        return (status is None or self.status is status) and (owner is None or self.owner == owner)

    def public(self, *, full: bool = True) -> dict[str, Any]:
        """The API view; `full=False` leaves out the result (for listings)."""
        body: dict[str, Any] = {
            "task_id": self.task_id,
            "kind": self.kind,
            "status": self.status.value,
            "priority": self.priority,
            "attempts": self.attempts,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }
        if self.started_at is not None:
            body["wait_ms"] = round((self.started_at - self.created_at) * 1000, 3)
        if self.started_at is not None and self.finished_at is not None:
            body["run_ms"] = round((self.finished_at - self.started_at) * 1000, 3)
        if full and self.result is not None:
            body["result"] = self.result
        if self.error is not None:
            body["error"] = self.error
        return body
