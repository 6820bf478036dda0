"""Tasks with the in-memory store: priorities and aging, admission, TTL and bounds, workers, cancel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry.trace import get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import ValidationError

from gateway_plugin.errors import BadRequest, PayloadTooLarge
from gateway_plugin.settings import ENVIRONMENT, Settings, TaskSettings
from gateway_plugin.tasks import (
    MAX_ATTEMPTS,
    Caller,
    MemoryTaskStore,
    QueueFull,
    TaskQueue,
    TaskRecord,
    TaskService,
    TaskStatus,
    UnknownTask,
    open_store,
    queue_score,
)
from tests.background import in_background
from tests.fake_clock import FakeClock


def _record(task_id: str, priority: str, at: float, aging_s: float = 10.0) -> TaskRecord:
    return TaskRecord(task_id, "inference", {}, priority, "anonymous", at, queue_score(priority, at, aging_s))


async def _drain(queue: TaskQueue) -> list[str]:
    order = []
    while (record := await queue.pop(lease_s=1.0, worker="w")) is not None:
        order.append(record.task_id)
    return order


async def test_high_before_normal_before_low_and_fifo_within_a_priority() -> None:
    clock = FakeClock()
    queue = TaskQueue(MemoryTaskStore(max_tasks=100, ttl_s=60), max_size=100, aging_s=10.0, clock=clock)
    for n, priority in enumerate(["low", "normal", "high", "low", "high", "normal"]):
        await queue.push(_record(f"{priority}-{n}", priority, clock.now + n * 0.1))
    assert await _drain(queue) == ["high-2", "high-4", "normal-1", "normal-5", "low-0", "low-3"]


async def test_the_memory_store_bounds_the_bytes_of_the_requests_it_holds() -> None:
    """Regression (audit): only the number of tasks was bounded, and each may hold a body-cap request."""
    clock = FakeClock()
    store = MemoryTaskStore(max_tasks=100, ttl_s=60, max_pending_bytes=1000)
    queue = TaskQueue(store, max_size=100, aging_s=10.0, clock=clock)
    sized = [_record(name, "normal", clock.now) for name in ("a", "b", "c", "d")]
    for record, size in zip(sized, (400, 500, 200, 100), strict=True):
        record.size = size
    await queue.push(sized[0])
    await queue.push(sized[1])
    with pytest.raises(QueueFull):
        await queue.push(sized[2])  # 900 + 200 > 1000
    await queue.push(sized[3])  # 900 + 100 fits
    assert store.held_bytes == 1000
    running = await queue.pop(lease_s=1.0, worker="w")
    assert running is not None
    assert store.held_bytes == 1000  # a running task keeps its request (a stop puts it back)
    assert await store.finish(running.task_id, TaskStatus.COMPLETED, now=clock.now, result={})
    assert store.held_bytes == 600
    assert await store.cancel("b", now=clock.now) is TaskStatus.PENDING
    assert await store.cancel("b", now=clock.now) is TaskStatus.CANCELLED  # freed once, not twice
    assert store.held_bytes == 100
    await queue.push(sized[2])
    assert store.held_bytes == 300
    too_big = _record("e", "normal", clock.now)
    too_big.size = 1001  # over the whole budget: it could never wait, so no 429 (retry) but a 413
    with pytest.raises(PayloadTooLarge):
        await queue.push(too_big)
    requeued = await queue.pop(lease_s=1.0, worker="w")
    assert requeued is not None
    assert await store.requeue(requeued.task_id)  # a stopping gateway's hand-back keeps its request
    assert store.held_bytes == 300


async def test_aging_a_low_task_is_not_starved_by_a_stream_of_high_ones() -> None:
    clock = FakeClock()
    queue = TaskQueue(MemoryTaskStore(max_tasks=1000, ttl_s=60), max_size=1000, aging_s=10.0, clock=clock)
    await queue.push(_record("low", "low", clock.now))
    started: list[str] = []
    for second in range(60):  # one high task arrives every second and one task runs every second
        clock.now += 1
        await queue.push(_record(f"high-{second}", "high", clock.now))
        record = await queue.pop(lease_s=1.0, worker="w")
        assert record is not None
        started.append(record.task_id)
    position = started.index("low")
    assert 15 <= position <= 21, position  # waited about 2 x aging_s behind newer high work, then ran


async def test_a_full_queue_refuses_with_429_and_retry_after() -> None:
    clock = FakeClock()
    queue = TaskQueue(MemoryTaskStore(max_tasks=100, ttl_s=60), max_size=2, aging_s=10.0, clock=clock)
    await queue.push(_record("a", "normal", clock.now))
    await queue.push(_record("b", "high", clock.now))
    with pytest.raises(QueueFull) as caught:
        await queue.push(_record("c", "low", clock.now))
    assert caught.value.status == 429
    assert int(caught.value.headers["Retry-After"]) >= 1
    stats = await queue.stats()
    assert stats.depth == 2
    assert stats.by_priority == {"high": 1, "normal": 1, "low": 0}
    clock.now += 3
    assert (await queue.stats()).head_wait_s == pytest.approx(3.0)
    await queue.pop(lease_s=1, worker="w")
    clock.now += 1
    await queue.pop(lease_s=1, worker="w")
    stats = await queue.stats()
    assert stats.depth == 0
    assert stats.mean_wait_s == pytest.approx(3.5)
    assert stats.started_per_s > 0
    await queue.push(_record("c", "low", clock.now))  # room again


async def test_memory_store_expires_finished_tasks_and_stays_bounded() -> None:
    store = MemoryTaskStore(max_tasks=3, ttl_s=60)
    for n in range(3):
        assert await store.add(_record(f"t{n}", "normal", 100.0 + n), max_pending=10)
    assert not await store.add(_record("t3", "normal", 104.0), max_pending=10)  # all three still pending
    claimed = await store.claim(now=105.0, lease_until=106.0, worker="w")
    assert claimed is not None
    assert claimed.task_id == "t0"
    assert claimed.attempts == 1
    await store.finish("t0", TaskStatus.COMPLETED, now=106.0, result={"ok": True})
    assert await store.add(_record("t3", "normal", 107.0), max_pending=10)  # evicts the finished t0
    assert await store.get("t0") is None
    second = await store.claim(now=108.0, lease_until=109.0, worker="w")
    assert second is not None
    await store.finish(second.task_id, TaskStatus.COMPLETED, now=109.0)
    await store.reclaim_expired(now=109.0 + 59)
    assert await store.get(second.task_id) is not None
    await store.reclaim_expired(now=109.0 + 61)  # the TTL has passed
    assert await store.get(second.task_id) is None


def running(service: TaskService) -> contextlib.AbstractAsyncContextManager[asyncio.Task[Any]]:
    return in_background(service.run())


async def _until(service: TaskService, task_id: str, status: TaskStatus, caller: Caller) -> TaskRecord:
    async with asyncio.timeout(10):
        while True:
            record = await service.get(task_id, caller)
            if record.status is status:
                return record
            await asyncio.sleep(0.01)


async def _settled(service: TaskService, task_id: str, caller: Caller) -> TaskRecord:
    """The task once it is neither pending nor running."""
    async with asyncio.timeout(10):
        while True:
            record = await service.get(task_id, caller)
            if record.status not in (TaskStatus.PENDING, TaskStatus.RUNNING):
                return record
            await asyncio.sleep(0.01)


class Runner:
    """A task runner whose `block` tasks wait until released, and whose `bad` tasks fail."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.cancelled: list[str] = []

    async def __call__(self, kind: str, request: dict[str, Any], task_id: str) -> dict[str, Any]:
        self.started.append(request["name"])
        if request["name"].startswith("block"):
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(request["name"])
                raise
        if request["name"] == "bad":
            raise BadRequest("bad input")
        return {"echo": request["name"]}


ME, OTHER, ADMIN = Caller("me"), Caller("other"), Caller("root", admin=True)


async def test_workers_run_tasks_by_priority_and_cancel_reaches_running_work() -> None:
    runner = Runner()
    service = TaskService(MemoryTaskStore(max_tasks=100, ttl_s=60), runner, TaskSettings(workers=1), poll_s=0.01)
    async with running(service):
        blocker = await service.submit("inference", {"name": "block"}, "normal", ME)
        await _until(service, blocker.task_id, TaskStatus.RUNNING, ME)
        low = await service.submit("inference", {"name": "low"}, "low", ME)
        dropped = await service.submit("inference", {"name": "dropped"}, "normal", ME)
        high = await service.submit("inference", {"name": "high"}, "high", ME)
        bad = await service.submit("inference", {"name": "bad"}, "normal", ME)
        assert (await service.cancel(dropped.task_id, ME)).status is TaskStatus.CANCELLED
        cancelled = await service.cancel(blocker.task_id, ME)  # running: its work is cancelled
        assert cancelled.status is TaskStatus.CANCELLED
        done = await _until(service, low.task_id, TaskStatus.COMPLETED, ME)
        assert done.result == {"echo": "low"}
        assert done.attempts == 1
        failed = await _until(service, bad.task_id, TaskStatus.ERROR, ME)
        assert failed.error is not None
        assert failed.error["status"] == 400
        assert runner.cancelled == ["block"]
        assert runner.started == ["block", "high", "bad", "low"]
        assert (await service.get(high.task_id, ME)).status is TaskStatus.COMPLETED
        assert (await service.get(blocker.task_id, ME)).status is TaskStatus.CANCELLED  # not overwritten


async def test_tasks_are_visible_to_their_submitter_and_to_admins_only() -> None:
    service = TaskService(MemoryTaskStore(max_tasks=100, ttl_s=60), Runner(), TaskSettings(workers=0))
    mine = await service.submit("inference", {"name": "x"}, "normal", ME)
    with pytest.raises(UnknownTask):
        await service.get(mine.task_id, OTHER)
    with pytest.raises(UnknownTask):
        await service.cancel(mine.task_id, OTHER)
    assert (await service.get(mine.task_id, ADMIN)).owner == "me"
    assert [r.task_id for r in await service.find(OTHER, status=None, limit=10)] == []
    assert [r.task_id for r in await service.find(ADMIN, status=TaskStatus.PENDING, limit=10)] == [mine.task_id]


async def test_stopping_the_workers_puts_running_tasks_back_in_the_queue() -> None:
    runner = Runner()
    store = MemoryTaskStore(max_tasks=100, ttl_s=60)
    service = TaskService(store, runner, TaskSettings(workers=1), poll_s=0.01)
    async with running(service):
        task = await service.submit("inference", {"name": "block-forever"}, "normal", ME)
        await _until(service, task.task_id, TaskStatus.RUNNING, ME)
    record = await service.get(task.task_id, ME)
    assert record.status is TaskStatus.PENDING
    assert record.attempts == 1
    assert runner.cancelled == ["block-forever"]
    runner.release.set()
    async with running(service):  # the next workers take it again: at least once, attempts show it
        again = await _until(service, task.task_id, TaskStatus.COMPLETED, ME)
    assert again.attempts == 2


class SlowAnsweringStore(MemoryTaskStore):
    """Claims at once, answers the claim late: a Redis round trip, stretched."""

    def __init__(self) -> None:
        super().__init__(max_tasks=100, ttl_s=60)
        self.claimed = asyncio.Event()

    async def claim(self, *, now: float, lease_until: float, worker: str) -> TaskRecord | None:
        record = await super().claim(now=now, lease_until=lease_until, worker=worker)
        if record is not None:
            self.claimed.set()
            await asyncio.sleep(0.2)
        return record


async def _stopped_when(store: MemoryTaskStore, moment: asyncio.Event) -> tuple[TaskService, TaskRecord]:
    """One task `quick` submitted, the workers stopped as soon as `moment` is set; its record then."""
    service = TaskService(store, Runner(), TaskSettings(workers=1), poll_s=0.01)
    task = await service.submit("inference", {"name": "quick"}, "normal", ME)
    async with running(service):
        await asyncio.wait_for(moment.wait(), timeout=10)
    return service, await service.get(task.task_id, ME)


async def test_a_stop_that_lands_during_a_claim_puts_the_task_back_at_once() -> None:
    """Regression (audit): the claimed task was left `running` on nobody until its lease ran out,
    and that start was counted as a crash's."""
    store = SlowAnsweringStore()
    service, record = await _stopped_when(store, store.claimed)  # the stop comes mid-claim
    assert record.status is TaskStatus.PENDING
    assert (record.attempts, record.handovers) == (1, 1)  # handed back, not a crash
    async with running(service):
        done = await _until(service, record.task_id, TaskStatus.COMPLETED, ME)
    assert done.result == {"echo": "quick"}


class CancelledAsClaimedStore(MemoryTaskStore):
    """A cancel that lands between the claim and the read of the record (two Redis steps)."""

    async def claim(self, *, now: float, lease_until: float, worker: str) -> TaskRecord | None:
        record = await super().claim(now=now, lease_until=lease_until, worker=worker)
        if record is None:
            return None
        await self.cancel(record.task_id, now=now)
        return await self.get(record.task_id)


class CancelledAfterTheClaimStore(MemoryTaskStore):
    """A DELETE answered after the claim returned, before the worker has registered the run (the
    turns of the event loop between the two)."""

    def __init__(self) -> None:
        super().__init__(max_tasks=100, ttl_s=60)
        self.cancels: list[asyncio.Future[TaskStatus | None]] = []

    async def claim(self, *, now: float, lease_until: float, worker: str) -> TaskRecord | None:
        record = await super().claim(now=now, lease_until=lease_until, worker=worker)
        if record is not None:
            asyncio.get_running_loop().call_soon(self._cancel_now, record.task_id, now)
        return record

    def _cancel_now(self, task_id: str, now: float) -> None:
        self.cancels.append(asyncio.ensure_future(self.cancel(task_id, now=now)))

    async def statuses(self, task_ids: Iterable[str]) -> Mapping[str, TaskStatus | None]:
        ids = list(task_ids)
        await asyncio.sleep(0.02)  # a Redis round trip: the runner must not start meanwhile (review)
        return await super().statuses(ids)


@pytest.mark.parametrize("store_class", [CancelledAsClaimedStore, CancelledAfterTheClaimStore])
async def test_a_task_cancelled_as_or_right_after_it_is_claimed_makes_no_node_call(
    store_class: type[CancelledAsClaimedStore | CancelledAfterTheClaimStore],
) -> None:
    """Regressions (audits): the worker ran a task whose record, read after the claim, said
    cancelled; and one cancelled just after the claim returned, before the worker registered the
    run: the DELETE answered `cancelled`, yet a short task made all its node calls."""
    started: list[str] = []
    finished: list[str] = []

    async def runner(kind: str, request: dict[str, Any], task_id: str) -> dict[str, Any]:
        started.append(task_id)
        await asyncio.sleep(0.3)  # its node call
        finished.append(task_id)
        return {}

    store = store_class() if store_class is CancelledAfterTheClaimStore else store_class(max_tasks=100, ttl_s=60)
    service = TaskService(store, runner, TaskSettings(workers=1), poll_s=0.01)
    task = await service.submit("inference", {"name": "x"}, "normal", ME)
    async with running(service):
        await _until(service, task.task_id, TaskStatus.CANCELLED, ME)
        await asyncio.sleep(0.5)
    assert (started, finished) == ([], [])  # not even started


class SlowFinishingStore(MemoryTaskStore):
    """Records a task's end late: a Redis round trip, stretched."""

    def __init__(self) -> None:
        super().__init__(max_tasks=100, ttl_s=60)
        self.finishing = asyncio.Event()

    async def finish(self, task_id: str, status: TaskStatus, **kwargs: Any) -> bool:
        self.finishing.set()
        await asyncio.sleep(0.2)
        return await super().finish(task_id, status, **kwargs)


async def test_a_stop_while_a_tasks_end_is_written_still_records_it() -> None:
    """Regression (audit): the stop cancelled the write: the task stayed `running` on nobody and ran
    again after its lease on another gateway, counted as a crash."""
    store = SlowFinishingStore()
    _, record = await _stopped_when(store, store.finishing)  # the stop comes mid-write
    assert (record.status, record.result) == (TaskStatus.COMPLETED, {"echo": "quick"})


async def test_a_task_handed_back_by_one_stopping_gateway_after_another_still_runs() -> None:
    """Regression: every graceful handover counted towards MAX_ATTEMPTS, so a long task caught by a
    rolling update of three replicas was failed as if it had crashed three gateways."""
    runner = Runner()
    store = MemoryTaskStore(max_tasks=100, ttl_s=60)
    service = TaskService(store, runner, TaskSettings(workers=1), poll_s=0.01)
    task = await service.submit("inference", {"name": "block-long"}, "normal", ME)
    for _ in range(MAX_ATTEMPTS + 1):  # each replica stops (SIGTERM) while the task runs on it
        async with running(service):
            await _until(service, task.task_id, TaskStatus.RUNNING, ME)
        assert (await service.get(task.task_id, ME)).status is TaskStatus.PENDING
    runner.release.set()
    async with running(service):
        done = await _until(service, task.task_id, TaskStatus.COMPLETED, ME)
    assert done.result == {"echo": "block-long"}
    assert done.attempts == MAX_ATTEMPTS + 2  # every start is still shown


@pytest.mark.parametrize(("starts", "handovers", "outcome"), [(3, 0, "given up"), (2, 0, "ran"), (3, 3, "ran")])
async def test_a_task_whose_starts_never_finished_is_given_up(starts: int, handovers: int, outcome: str) -> None:
    """Starts that ended with their gateway (a crash, a lost lease) count; handovers do not."""
    store = MemoryTaskStore(max_tasks=100, ttl_s=60)
    record = TaskRecord("t", "inference", {"name": "ok"}, "normal", "me", 1.0, 1.0)
    record.attempts, record.handovers = starts, handovers
    assert await store.add(record, max_pending=10)
    service = TaskService(store, Runner(), TaskSettings(workers=1), poll_s=0.01)
    async with running(service):
        finished = await _settled(service, "t", ME)
    if outcome == "given up":
        assert finished.status is TaskStatus.ERROR
        assert finished.error is not None
        assert f"given up after {MAX_ATTEMPTS} attempts" in finished.error["detail"]
    else:
        assert finished.status is TaskStatus.COMPLETED
    assert finished.attempts == starts + 1


async def test_a_task_runs_in_the_trace_of_the_request_that_queued_it() -> None:
    """Regression: the queue-wait span, the dispatch span and the node calls each began a new trace."""
    caller_trace = "0af7651916cd43dd8448eb211c80319c"
    seen: dict[str, str | None] = {}

    class TracedRunner(Runner):
        async def __call__(self, kind: str, request: dict[str, Any], task_id: str) -> dict[str, Any]:
            seen["runner"] = _trace_id()
            return await super().__call__(kind, request, task_id)

    def on_start(priority: str, waited_s: float) -> None:
        seen["queue wait"] = _trace_id()

    store = MemoryTaskStore(max_tasks=100, ttl_s=60)
    service = TaskService(store, TracedRunner(), TaskSettings(workers=1), poll_s=0.01, on_start=on_start)
    carrier = {"traceparent": f"00-{caller_trace}-b7ad6b7169203331-01"}
    token = otel_context.attach(TraceContextTextMapPropagator().extract(carrier))
    try:
        task = await service.submit("inference", {"name": "ok"}, "normal", ME)
    finally:
        otel_context.detach(token)
    async with running(service):  # workers start outside any trace, as in the lifespan
        await _until(service, task.task_id, TaskStatus.COMPLETED, ME)
    assert seen == {"queue wait": caller_trace, "runner": caller_trace}
    assert "trace" not in (await service.get(task.task_id, ME)).public()


def _trace_id() -> str | None:
    context = get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def test_task_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DISTINFER_TASK_STORE", "redis://cache:6379/2")
    monkeypatch.setenv("DISTINFER_TASK_WORKERS", "0")
    monkeypatch.setenv("DISTINFER_TASK_AGING_S", "2.5")
    monkeypatch.setenv("DISTINFER_MAX_INFLIGHT", "7")
    monkeypatch.setenv("DISTINFER_BATCH_COALESCE", "false")
    settings = Settings()
    tasks = settings.tasks
    assert (tasks.store.get_secret_value(), tasks.workers, tasks.aging_s) == ("redis://cache:6379/2", 0, 2.5)
    assert settings.limits.max_inflight == 7
    assert settings.orchestration.coalesce is False
    assert isinstance(open_store("memory", max_tasks=10, ttl_s=1), MemoryTaskStore)
    monkeypatch.setenv("DISTINFER_TASK_STORE", "postgres://nope")
    with pytest.raises(ValidationError):
        Settings()


class CancelSwallowingStore(MemoryTaskStore):
    """A store whose calls behave like redis-py's on Python 3.11: `asyncio.wait_for` inside them
    returns normally when the cancel lands as the call completes, so the caller never sees it."""

    async def claim(self, *, now: float, lease_until: float, worker: str) -> TaskRecord | None:
        with contextlib.suppress(asyncio.CancelledError):  # swallowed, as wait_for does
            await asyncio.sleep(0.005)  # the round trip
        return await super().claim(now=now, lease_until=lease_until, worker=worker)


async def test_workers_stop_even_when_the_store_swallows_the_cancel() -> None:
    """Regression: the lifespan cancelled the task workers, redis-py ate the cancel, the workers
    looped on and the shutdown never ended."""
    store = CancelSwallowingStore(max_tasks=100, ttl_s=60)
    service = TaskService(store, Runner(), TaskSettings(workers=2), poll_s=0.001)
    queued = await service.submit("inference", {"name": "x"}, "normal", ME)
    await service.submit("inference", {"name": "y"}, "normal", ME)
    for _ in range(20):
        task = asyncio.create_task(service.run())
        await asyncio.sleep(0.003)  # inside a claim, or between two
        task.cancel()
        stopped, _ = await asyncio.wait({task}, timeout=2)
        assert task in stopped
    assert (await service.get(queued.task_id, ME)).status in (TaskStatus.PENDING, TaskStatus.COMPLETED)


def test_a_task_store_url_with_a_password_is_never_shown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Regression: the Redis URL was a plain string: its password showed in repr(Settings()) and in
    the ValidationError of a bad value."""
    monkeypatch.chdir(tmp_path)
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DISTINFER_TASK_STORE", "redis://:hunter2@cache:6379/0")
    settings = Settings()
    assert "hunter2" not in repr(settings)
    assert settings.tasks.store.get_secret_value() == "redis://:hunter2@cache:6379/0"
    monkeypatch.setenv("DISTINFER_TASK_STORE", "postgres://user:hunter2@db/tasks")
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert "hunter2" not in str(refused.value)
    assert "'postgres'" in str(refused.value)
    # Code-first hosts build the section on its own, or assign to it: no echo there either.
    with pytest.raises(ValidationError) as alone:
        TaskSettings(store="postgres://user:hunter2@db/tasks")  # type: ignore[arg-type]
    assert "hunter2" not in str(alone.value)
    with pytest.raises(ValidationError) as assigned:
        settings.tasks.store = "postgres://user:hunter2@db/tasks"  # type: ignore[assignment]
    assert "hunter2" not in str(assigned.value)
