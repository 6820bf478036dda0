"""Asynchronous tasks: a priority queue with aging and admission control, a store, and their workers."""

from gateway_plugin.tasks.model import ANONYMOUS, PRIORITY_RANK, Caller, TaskRecord, TaskStatus, queue_score
from gateway_plugin.tasks.queue import QueueFull, QueueStats, TaskQueue
from gateway_plugin.tasks.service import MAX_ATTEMPTS, TaskRunner, TaskService, UnknownTask
from gateway_plugin.tasks.store import MemoryTaskStore, PendingSnapshot, TaskStore

__all__ = [
    "ANONYMOUS",
    "MAX_ATTEMPTS",
    "PRIORITY_RANK",
    "Caller",
    "MemoryTaskStore",
    "PendingSnapshot",
    "QueueFull",
    "QueueStats",
    "TaskQueue",
    "TaskRecord",
    "TaskRunner",
    "TaskService",
    "TaskStatus",
    "TaskStore",
    "UnknownTask",
    "open_store",
    "queue_score",
]


def open_store(url: str, *, max_tasks: int, ttl_s: float, max_pending_bytes: int | None = None) -> TaskStore:
    """The store `DISTINFER_TASK_STORE` names: `memory`, or a Redis URL shared by every replica."""
    if url == "memory":
        return MemoryTaskStore(max_tasks=max_tasks, ttl_s=ttl_s, max_pending_bytes=max_pending_bytes)
    from gateway_plugin.tasks.redis_store import RedisTaskStore

    return RedisTaskStore.from_url(url, ttl_s=ttl_s)
