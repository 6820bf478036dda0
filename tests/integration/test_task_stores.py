"""The two task stores keep the same promises: the memory store, and Redis on a real `redis-server`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway_plugin.tasks import MemoryTaskStore, TaskRecord, TaskStatus, TaskStore, queue_score
from gateway_plugin.tasks.redis_store import RedisTaskStore
from tests.integration.redis_server import RedisServer


@asynccontextmanager
async def _on_redis(directory: Path, ttl_s: float = 60) -> AsyncIterator[RedisTaskStore]:
    server = RedisServer(directory).start()
    store = RedisTaskStore.from_url(server.url, ttl_s=ttl_s)
    try:
        yield store
    finally:
        await store.close()
        server.stop()


@pytest.fixture
async def redis_store(tmp_path: Path) -> AsyncIterator[RedisTaskStore]:
    async with _on_redis(tmp_path) as store:
        yield store


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskStore]:
    if request.param == "memory":
        yield MemoryTaskStore(max_tasks=100, ttl_s=60)
        return
    async with _on_redis(tmp_path) as on_redis:
        yield on_redis


def _record(task_id: str, priority: str, at: float, owner: str = "me") -> TaskRecord:
    return TaskRecord(task_id, "inference", {"n": task_id}, priority, owner, at, queue_score(priority, at, 10.0))


async def test_order_admission_cancel_requeue_and_reclaim(store: TaskStore) -> None:
    for n, priority in enumerate(["low", "normal", "high", "normal"]):
        assert await store.add(_record(f"t{n}", priority, 100.0 + n), max_pending=4)
    assert not await store.add(_record("t4", "high", 105.0), max_pending=4)  # full: nothing stored
    assert await store.get("t4") is None
    snapshot = await store.pending()
    assert (snapshot.depth, snapshot.by_priority) == (4, {"high": 1, "normal": 2, "low": 1})
    assert snapshot.head_created_at == 102.0  # the high one runs next

    assert await store.cancel("t3", now=106.0) is TaskStatus.PENDING
    first = await store.claim(now=107.0, lease_until=108.0, worker="w1")
    assert first is not None
    assert (first.task_id, first.status, first.attempts, first.request) == ("t2", TaskStatus.RUNNING, 1, {"n": "t2"})
    second = await store.claim(now=107.0, lease_until=108.0, worker="w1")
    assert second is not None
    assert second.task_id == "t1"  # t3 was cancelled: skipped
    assert await store.cancel("t1", now=107.5) is TaskStatus.RUNNING
    assert not await store.finish("t1", TaskStatus.COMPLETED, now=108.0, result={"late": True})
    assert (await store.get("t1")).status is TaskStatus.CANCELLED  # type: ignore[union-attr]

    assert await store.requeue("t2")  # its gateway stops: back in its old place
    again = await store.claim(now=109.0, lease_until=110.0, worker="w2")
    assert again is not None
    assert (again.task_id, again.attempts, again.handovers) == ("t2", 2, 1)  # a handover, not a crash
    assert await store.finish("t2", TaskStatus.COMPLETED, now=110.0, result={"ok": 1})
    done = await store.get("t2")
    assert done is not None
    assert (done.status, done.result, done.finished_at) == (TaskStatus.COMPLETED, {"ok": 1}, 110.0)

    statuses = await store.statuses(["t0", "t2", "nope"])
    assert statuses == {"t0": TaskStatus.PENDING, "t2": TaskStatus.COMPLETED, "nope": None}
    listed = await store.find(status=None, owner="me", limit=10)
    assert [r.task_id for r in listed] == ["t3", "t2", "t1", "t0"]  # newest first; t4 was refused
    assert [r.task_id for r in await store.find(status=TaskStatus.PENDING, owner=None, limit=10)] == ["t0"]
    assert await store.find(status=None, owner="someone else", limit=10) == []


async def test_a_dead_gateways_tasks_are_reclaimed_when_its_lease_runs_out(redis_store: RedisTaskStore) -> None:
    store = redis_store  # (the memory store has no one to hand a dead process's tasks to)
    await store.add(_record("a", "normal", 100.0), max_pending=10)
    claimed = await store.claim(now=100.0, lease_until=101.0, worker="dead")
    assert claimed is not None
    await store.renew(["a"], lease_until=103.0)  # still alive at 100 s: renewed until 103 s
    assert await store.reclaim_expired(now=102.0) == []
    assert await store.reclaim_expired(now=104.0) == ["a"]  # not renewed since: back to pending
    record = await store.get("a")
    assert record is not None
    assert (record.status, record.started_at) == (TaskStatus.PENDING, None)
    retried = await store.claim(now=105.0, lease_until=106.0, worker="alive")
    assert retried is not None
    assert (retried.task_id, retried.attempts, retried.worker) == ("a", 2, "alive")
    assert retried.handovers == 0  # its gateway died with it: that start counts towards MAX_ATTEMPTS


async def test_a_finished_tasks_request_is_dropped_and_listings_read_no_bodies(store: TaskStore) -> None:
    """Regression: every finished task kept its request (up to the body cap) for its whole TTL, and a
    Redis listing loaded and parsed each task's request and result to show neither."""
    big = {"payload": "x" * 200_000}
    for n, task_id in enumerate(("done", "cancelled", "waiting")):  # claimed in this order
        record = _record(task_id, "normal", 100.0 + n / 10)
        record.request = big
        assert await store.add(record, max_pending=10)
    claimed = await store.claim(now=101.0, lease_until=200.0, worker="w")
    assert claimed is not None
    assert claimed.task_id == "done"
    assert claimed.request == big  # a running task still has it (a stop puts it back in the queue)
    assert await store.finish(claimed.task_id, TaskStatus.COMPLETED, now=102.0, result={"r": "y" * 200_000})
    await store.cancel("cancelled", now=103.0)
    finished = [await store.get(claimed.task_id), await store.get("cancelled")]
    assert [record.request if record else None for record in finished] == [{}, {}]
    waiting = await store.get("waiting")
    assert waiting is not None
    assert waiting.status is TaskStatus.PENDING
    # Regression (audit): a poll on Redis read and parsed the whole request to show none of it.
    assert waiting.request == ({} if isinstance(store, RedisTaskStore) else big)
    listed = {record.task_id: record for record in await store.find(status=None, owner="me", limit=10)}
    assert set(listed) == {"done", "cancelled", "waiting"}
    if isinstance(store, RedisTaskStore):  # it reads only what a listing shows
        assert all(record.request == {} and record.result is None for record in listed.values())
    assert listed[claimed.task_id].status is TaskStatus.COMPLETED
    assert (await store.get(claimed.task_id)).result == {"r": "y" * 200_000}  # type: ignore[union-attr]
    running = await store.claim(now=104.0, lease_until=200.0, worker="w")  # the worker gets the request
    assert running is not None
    assert (running.task_id, running.request) == ("waiting", big)


async def test_the_redis_index_forgets_expired_tasks_as_fast_as_they_come(tmp_path: Path) -> None:
    """Regression: a pass checked the 50 oldest entries only (every 5 s): at 100 tasks/s the index
    grew by ~90 entries a second for good. One pass now clears the expired backlog, stepping over
    an old task that is still alive."""
    async with _on_redis(tmp_path, ttl_s=0.05) as store:
        assert await store.add(_record("old-but-alive", "normal", 1.0), max_pending=5000)
        for n in range(1500):
            assert await store.add(_record(f"t{n}", "normal", 2.0 + n / 1000), max_pending=5000)
        await store.claim(now=3.0, lease_until=1e12, worker="w")  # the oldest: running, stays
        for n in range(1500):
            assert await store.cancel(f"t{n}", now=3.0) is TaskStatus.PENDING  # expire 50 ms later
        await asyncio.sleep(0.3)
        forgotten = await store._prune_index()
        remaining = await store._redis.zcard(store._index_key)  # type: ignore[misc]
        owners_index = await store._redis.zcard(store._owner_key("me"))  # type: ignore[misc]
        owners = await store._redis.hlen(store._owners_key)  # type: ignore[misc]
    assert (forgotten, remaining) == (1500, 1)
    assert (owners_index, owners) == (1, 1)  # the owners' indexes are pruned alike


async def test_a_callers_listing_finds_its_tasks_behind_any_number_of_others(redis_store: RedisTaskStore) -> None:
    """Regression (audit): a Redis listing scanned the newest 1,000 entries of everyone's tasks, so a
    caller's own task disappeared from its list behind 1,000 newer tasks of others."""
    store = redis_store
    assert await store.add(_record("mine", "normal", 1.0, owner="alice"), max_pending=5000)
    for n in range(1100):
        assert await store.add(_record(f"bob-{n}", "normal", 2.0 + n / 1000, owner="bob"), max_pending=5000)
    for limit in (1, 100):
        listed = await store.find(status=None, owner="alice", limit=limit)
        assert [record.task_id for record in listed] == ["mine"]
    assert len(await store.find(status=None, owner="bob", limit=5)) == 5
    assert [r.task_id for r in await store.find(status=TaskStatus.PENDING, owner="alice", limit=10)] == ["mine"]


async def test_tasks_submitted_before_the_owner_index_reach_their_owners_listing(tmp_path: Path) -> None:
    """Regression: tasks that a gateway older than the per-owner indexes had submitted showed by id
    and in admins' listings, never in their owner's own listing."""
    async with _on_redis(tmp_path) as store:
        for n in range(1200):  # over one scan batch
            assert await store.add(_record(f"old-{n}", "normal", 1.0 + n, owner=f"o{n % 3}"), max_pending=5000)
        assert await store.add(_record("new", "normal", 5000.0, owner="o0"), max_pending=5000)
        # What the older gateway left: the records and the shared index, no owner indexes.
        older = [f"old-{n}" for n in range(1200)]
        await store._redis.hdel(store._owners_key, *older)  # type: ignore[misc]
        for owner in ("o0", "o1", "o2"):
            await store._redis.zrem(store._owner_key(owner), *older)  # type: ignore[misc]
        assert [r.task_id for r in await store.find(status=None, owner="o1", limit=5)] == []

        await store.reclaim_expired(now=10.0)  # a gateway's first pass fills them in
        listed = await store.find(status=None, owner="o1", limit=500)
        assert len(listed) == 400
        assert [r.task_id for r in listed[:2]] == ["old-1198", "old-1195"]  # newest first, by created_at
        assert [r.task_id for r in await store.find(status=None, owner="o0", limit=2)] == ["new", "old-1197"]
        assert await store._redis.hlen(store._owners_key) == 1201  # type: ignore[misc]


async def test_the_submitters_trace_context_travels_with_the_task(store: TaskStore) -> None:
    record = _record("traced", "normal", 100.0)
    record.trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    assert await store.add(record, max_pending=10)
    assert await store.add(_record("plain", "normal", 101.0), max_pending=10)
    claimed = await store.claim(now=102.0, lease_until=200.0, worker="w")
    assert claimed is not None
    assert (claimed.task_id, claimed.trace) == ("traced", record.trace)
    plain = await store.get("plain")
    assert plain is not None
    assert plain.trace is None


async def test_a_status_filter_finds_a_callers_older_tasks_behind_many_newer_ones(store: TaskStore) -> None:
    """Regression (audit): a filtered Redis listing read whole rows of the newest 1,000 to 2,000 of
    the caller's tasks only, so its older pending task was missing (the memory store found it)."""
    if isinstance(store, MemoryTaskStore):
        store = MemoryTaskStore(max_tasks=5000, ttl_s=60)
    assert await store.add(_record("old-pending", "normal", 1.0), max_pending=5000)
    for n in range(2100):
        assert await store.add(_record(f"done-{n}", "normal", 2.0 + n / 1000), max_pending=5000)
        assert await store.cancel(f"done-{n}", now=3.0) is TaskStatus.PENDING
    for owner in ("me", None):
        listed = await store.find(status=TaskStatus.PENDING, owner=owner, limit=10)
        assert [record.task_id for record in listed] == ["old-pending"], owner
    assert len(await store.find(status=TaskStatus.CANCELLED, owner="me", limit=3)) == 3


async def test_a_redis_at_maxmemory_still_records_ends_and_refuses_new_tasks_as_a_full_queue(tmp_path: Path) -> None:
    """Regression (audit): under `maxmemory` with `noeviction`, finishing a task began with a write
    Redis refused, so its end was lost and it ran again after its lease; and a submission into the
    full Redis was a 503 `task_store_unavailable` rather than 429 `queue_full`."""
    async with _on_redis(tmp_path) as store:
        big = {"pad": "x" * 200_000}
        added = 0
        for n in range(200):
            record = TaskRecord(f"t{n}", "inference", big, "normal", "me", float(n), queue_score("normal", n, 10.0))
            if not await store.add(record, max_pending=1000):
                break
            added += 1
            if n == 5:
                used = int((await store._redis.info("memory"))["used_memory"])
                await store._redis.config_set("maxmemory", used + 2_000_000)
        assert 5 < added < 200  # the add that found Redis full was refused (False: QueueFull's 429)
        claimed = await store.claim(now=1000.0, lease_until=2000.0, worker="w")
        assert claimed is not None
        assert await store.finish(claimed.task_id, TaskStatus.COMPLETED, now=1001.0, result={"ok": True})
        done = await store.get(claimed.task_id)
        assert done is not None
        assert (done.status, done.result) == (TaskStatus.COMPLETED, {"ok": True})
