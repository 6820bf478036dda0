"""Tasks end to end: submit, read, list, cancel, and the workers that run them (owned by the lifespan).

`run()` is the one background job: `workers` loops that take the next task from the queue and
run it, and a watcher that renews this gateway's leases, notices tasks cancelled on another
replica (and cancels their in-flight node calls here), and hands back tasks whose gateway died.
When the lifespan ends, tasks still running go back to the queue for the next gateway.

    UnknownTask (NotFound)                    404 no such task, or not the caller's
    TaskStoreUnavailable (NoCapacity)         503 the store (Redis) cannot be reached
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway_plugin.errors import DistinferError, NoCapacity, NotFound, from_worker, problem_body
from gateway_plugin.settings import TaskSettings
from gateway_plugin.tasks.model import Caller, TaskRecord, TaskStatus
from gateway_plugin.tasks.queue import QueueStats, TaskQueue
from gateway_plugin.tasks.store import TaskStore
from worker.errors import WorkerError

__all__ = ["MAX_ATTEMPTS", "TaskRunner", "TaskService", "TaskStoreUnavailable", "UnknownTask"]

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()


def _trace_context() -> dict[str, str] | None:
    """The current trace context as W3C headers (the submitting request's), None outside any trace."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier or None


# A task that keeps taking its gateway down is given up after this many starts; starts a stopping
# gateway handed back (a rolling update) do not count.
MAX_ATTEMPTS = 3

# (kind, request, task_id) -> the result body.
TaskRunner = Callable[[str, dict[str, Any], str], Coroutine[Any, Any, dict[str, Any]]]


class UnknownTask(NotFound):
    code, title = "unknown_task", "Unknown task"


class TaskStoreUnavailable(NoCapacity):
    code, title = "task_store_unavailable", "Task store unavailable"


@contextlib.asynccontextmanager
async def _store_errors() -> AsyncIterator[None]:
    """A store that cannot be reached (Redis down) is a 503 for the caller, never a 500."""
    try:
        yield
    except DistinferError:
        raise
    except Exception as exc:
        log.warning("task store: %s: %s", type(exc).__name__, exc)
        raise TaskStoreUnavailable(f"the task store cannot be reached: {type(exc).__name__}") from exc


class TaskService:
    def __init__(
        self,
        store: TaskStore,
        runner: TaskRunner,
        settings: TaskSettings,
        *,
        clock: Callable[[], float] = time.time,
        poll_s: float = 0.2,
        on_start: Callable[[str, float], None] | None = None,
    ) -> None:
        self.store = store
        # Telemetry's hook: (priority, seconds waited in the queue), called as each task starts.
        self._on_start = on_start
        # Queue depth as of the watcher's last look: metrics are read synchronously, the store is not.
        self.depth = 0
        self.queue = TaskQueue(store, max_size=settings.queue_size, aging_s=settings.aging_s, clock=clock)
        self._runner = runner
        self._workers = settings.workers
        self._lease_s = settings.lease_s
        self._clock = clock
        self._poll_s = poll_s
        self._watch_s = min(settings.lease_s / 3, 0.5)
        self.replica = uuid.uuid4().hex[:8]
        self._running: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ API

    async def submit(
        self, kind: str, request: dict[str, Any], priority: str, caller: Caller, *, size: int = 0
    ) -> TaskRecord:
        """Queue a task; `size`: the bytes of its request as submitted (the memory store's budget)."""
        now = self._clock()
        record = TaskRecord(
            task_id=uuid.uuid4().hex,
            kind=kind,
            request=request,
            priority=priority,
            owner=caller.subject,
            created_at=now,
            score=self.queue.score(priority, now),
            trace=_trace_context(),
            size=size,
        )
        async with _store_errors():
            await self.queue.push(record)
        self._wake.set()
        return record

    async def get(self, task_id: str, caller: Caller) -> TaskRecord:
        async with _store_errors():
            record = await self.store.get(task_id)
        if record is None or not caller.may_see(record.owner):
            raise UnknownTask(f"no task {task_id!r}")
        return record

    async def find(self, caller: Caller, *, status: TaskStatus | None, limit: int) -> list[TaskRecord]:
        owner = None if caller.admin else caller.subject
        async with _store_errors():
            return await self.store.find(status=status, owner=owner, limit=limit)

    async def cancel(self, task_id: str, caller: Caller) -> TaskRecord:
        """Cancel a pending or running task (running: its node calls are cancelled); finished ones stay."""
        await self.get(task_id, caller)
        async with _store_errors():
            before = await self.store.cancel(task_id, now=self._clock())
        if before is TaskStatus.RUNNING and (local := self._running.get(task_id)) is not None:
            local.cancel()
        return await self.get(task_id, caller)

    async def stats(self) -> QueueStats:
        async with _store_errors():
            return await self.queue.stats()

    @property
    def running(self) -> int:
        """Tasks running on this replica now."""
        return len(self._running)

    @property
    def workers(self) -> int:
        return self._workers

    # ------------------------------------------------------------------ background

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for number in range(self._workers):
                group.create_task(self._worker(f"{self.replica}-{number}"))
            group.create_task(self._watch())

    async def _worker(self, name: str) -> None:
        while True:
            _stop_if_cancelled()
            self._wake.clear()
            claim = asyncio.ensure_future(self.queue.pop(lease_s=self._lease_s, worker=name))
            try:
                # Shielded: a stop that lands between the store's claim and its answer (a Redis round
                # trip) would leave the task running on nobody until its lease ran out, as a crash.
                record = await asyncio.shield(claim)
            except asyncio.CancelledError:
                await self._give_back(claim)
                raise
            except Exception as exc:  # the store is down: keep the worker, try again soon
                log.warning("task worker %s cannot reach the task store: %s", name, exc)
                await asyncio.sleep(1.0)
                continue
            if record is not None and _cancel_requested():  # claimed as the stop came: give it back
                with contextlib.suppress(Exception):
                    await self.store.requeue(record.task_id)
                raise asyncio.CancelledError
            if record is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_s):
                        await self._wake.wait()
                continue
            await self._execute(record)

    async def _give_back(self, claim: asyncio.Future[TaskRecord | None]) -> None:
        """The gateway stops during `claim`: let it end, and put back in the queue what it took."""
        with contextlib.suppress(Exception):
            record = await claim
            if record is not None:
                await self.store.requeue(record.task_id)

    async def _execute(self, record: TaskRecord) -> None:
        if record.status is TaskStatus.CANCELLED:  # cancelled between the claim and its read (Redis)
            return
        if record.attempts - record.handovers > MAX_ATTEMPTS:
            error = DistinferError(f"given up after {MAX_ATTEMPTS} attempts that did not finish")
            await self._finish(record, TaskStatus.ERROR, error=problem_body(error, record.task_id))
            return
        # A cancel that came since the claim found nothing here to stop (Regression, audit: the store
        # said `cancelled` while the task ran). Held in its place while the store is asked, a cancel
        # from now on finds the placeholder, then the task.
        placeholder: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._running[record.task_id] = placeholder
        try:
            with contextlib.suppress(Exception):  # a store out of reach now: the watcher looks again soon
                if (await self.store.statuses([record.task_id])).get(record.task_id) is not TaskStatus.RUNNING:
                    placeholder.cancel()
            _stop_if_cancelled()  # a stop whose cancel the store's client swallowed
        except asyncio.CancelledError:  # the gateway stops: the next one picks the task up again
            self._running.pop(record.task_id, None)
            with contextlib.suppress(Exception):
                await self.store.requeue(record.task_id)
            raise
        if placeholder.cancelled():
            self._running.pop(record.task_id, None)
            return
        # In the submitter's trace: the queue-wait span, and the runner's (a task copies the context).
        token = otel_context.attach(_PROPAGATOR.extract(record.trace)) if record.trace else None
        try:
            if self._on_start is not None:
                self._on_start(record.priority, max(0.0, (record.started_at or self._clock()) - record.created_at))
            task = asyncio.create_task(self._runner(record.kind, record.request, record.task_id))
        finally:
            if token is not None:
                otel_context.detach(token)
        self._running[record.task_id] = task
        try:
            # asyncio.wait, not await: a user's cancel ends `task`, a shutdown ends this worker.
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.store.requeue(record.task_id)  # the next gateway picks it up again
            raise
        finally:
            self._running.pop(record.task_id, None)
        if task.cancelled():
            return  # cancelled by a user: the store already says so
        exc = task.exception()
        if exc is None:
            await self._finish(record, TaskStatus.COMPLETED, result=task.result())
        elif isinstance(exc, DistinferError):
            await self._finish(record, TaskStatus.ERROR, error=problem_body(exc, record.task_id))
        elif isinstance(exc, WorkerError):  # the local fallback's refusal: its 400/404, as the route gives
            await self._finish(record, TaskStatus.ERROR, error=problem_body(from_worker(exc), record.task_id))
        else:
            log.error("task %s failed", record.task_id, exc_info=exc)
            error = DistinferError("unexpected error; see the gateway log")
            await self._finish(record, TaskStatus.ERROR, error=problem_body(error, record.task_id))

    async def _finish(
        self,
        record: TaskRecord,
        status: TaskStatus,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        # Shielded, and waited for when the gateway stops meanwhile: a cancelled write left the task
        # running on nobody, to be run again after its lease as if this gateway had crashed (audit).
        writing = asyncio.ensure_future(
            self.store.finish(record.task_id, status, now=self._clock(), result=result, error=error)
        )
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await writing
            raise
        except Exception as exc:  # its lease runs out and another gateway runs it again
            log.warning("could not record the end of task %s: %s", record.task_id, exc)

    async def _watch(self) -> None:
        while True:
            _stop_if_cancelled()
            await asyncio.sleep(self._watch_s)
            try:
                await self._watch_once()
            except Exception as exc:
                log.warning("task watcher: %s", exc)

    async def _watch_once(self) -> None:
        self.depth = (await self.queue.stats()).depth
        now = self._clock()
        ids = list(self._running)
        if ids:
            await self.store.renew(ids, lease_until=now + self._lease_s)
            for task_id, status in (await self.store.statuses(ids)).items():
                if status is not TaskStatus.RUNNING and (task := self._running.get(task_id)) is not None:
                    task.cancel()  # cancelled on another replica (or expired): stop the node calls here
        moved = await self.store.reclaim_expired(now=now)
        if moved:
            log.warning("requeued %d task(s) whose gateway stopped renewing: %s", len(moved), moved)
            self._wake.set()


def _cancel_requested() -> bool:
    """Whether this task was asked to stop, even if the cancel was swallowed on its way.

    redis-py wraps socket calls in `asyncio.wait_for`, which on Python 3.11 returns normally when
    the cancel lands just as the call completes. The request stays counted on the task, so a
    loop that checks it still stops (otherwise the lifespan's shutdown waited forever).
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _stop_if_cancelled() -> None:
    if _cancel_requested():
        raise asyncio.CancelledError
