"""Tasks in Redis (`DISTINFER_TASK_STORE=redis://...`): every gateway replica sees the same tasks and queue.

Keys, under one prefix:

    t:<id>     hash: the record (request, result and error as JSON); expires `ttl_s` after it finishes
    pending    sorted set id -> queue score: the one queue all replicas take work from
    running    sorted set id -> lease expiry: a replica renews its tasks' leases while it runs them
    index      sorted set id -> created_at: for listings (ids of expired records are pruned lazily)
    owner:<o>  sorted set id -> created_at: the tasks of one owner, for their own listings
    owners     hash id -> owner: whose index an expired record's id is pruned from
    depth      hash priority -> pending count

Each step that moves a task between states is one Lua script, so two replicas never both claim a
task and a cancel never races a claim. A replica that dies stops renewing; any replica then moves
its tasks back to pending (at-least-once: `attempts` shows the retry).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import redis.asyncio as redis
from redis import exceptions as redis_errors

from gateway_plugin.tasks.model import PRIORITY_RANK, TaskRecord, TaskStatus
from gateway_plugin.tasks.store import PendingSnapshot

__all__ = ["RedisTaskStore"]

_ADD = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[3], unpack(ARGV, 7))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[6], ARGV[4], ARGV[6])
return 1
"""

_CLAIM = """
while true do
  local popped = redis.call('ZPOPMIN', KEYS[1])
  if #popped == 0 then return false end
  local id = popped[1]
  local key = ARGV[3] .. id
  if redis.call('HGET', key, 'status') == 'pending' then
    redis.call('HINCRBY', KEYS[3], redis.call('HGET', key, 'priority'), -1)
    redis.call('HSET', key, 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[4])
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('ZADD', KEYS[2], ARGV[2], id)
    return id
  end
end
"""

# What a listing reads of each task (`TaskRecord.public(full=False)`); requests and results may be large.
_LISTED: tuple[str, ...] = ("task_id", "kind", "priority", "owner", "created_at", "score", "status", "attempts")
_LISTED += ("started_at", "finished_at", "error", "worker")
# What `get` reads: all but the request, which only `claim` hands over. A poll of a task holding a
# 15 MB batch parsed it whole (285 ms, the event loop blocked) to answer with 200 bytes.
_SHOWN: tuple[str, ...] = (*_LISTED, "result", "handovers", "trace")

# Frees before it writes: at `maxmemory` Redis refuses a script's HSET only until the script has
# written something, so the request's bytes go first (Regression, audit: under `noeviction` every
# task's end was refused, and the task ran again once its lease ran out).
_FINISH = """
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return 0 end
redis.call('HDEL', KEYS[2], 'request')
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'status', ARGV[2], 'finished_at', ARGV[3], 'result', ARGV[4], 'error', ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1
"""

_CANCEL = """
local status = redis.call('HGET', KEYS[3], 'status')
if not status then return false end
if status == 'pending' or status == 'running' then
  if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
    redis.call('HINCRBY', KEYS[4], redis.call('HGET', KEYS[3], 'priority'), -1)
  end
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[3], 'status', 'cancelled', 'finished_at', ARGV[2])
  redis.call('HDEL', KEYS[3], 'request')
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return status
"""

_REQUEUE = """
local moved = {}
for i, id in ipairs(ARGV) do
  if i > 2 then
    local key = ARGV[1] .. id
    redis.call('ZREM', KEYS[2], id)
    if redis.call('HGET', key, 'status') == 'running' then
      redis.call('HSET', key, 'status', 'pending')
      redis.call('HDEL', key, 'started_at', 'worker')
      if ARGV[2] == '1' then redis.call('HINCRBY', key, 'handovers', 1) end
      redis.call('ZADD', KEYS[1], redis.call('HGET', key, 'score'), id)
      redis.call('HINCRBY', KEYS[3], redis.call('HGET', key, 'priority'), 1)
      table.insert(moved, id)
    end
  end
end
return moved
"""


_PRUNE_EVERY_S = 5.0  # how often a replica looks for index entries of expired records
_FILTERED_PAGE = 500  # ids per round trip when a listing filters by status
_MAX_SCANNED = 100_000  # index entries a listing looks at, at most


def _dump(value: Any) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"))


def _load(value: str | None) -> Any:
    return json.loads(value) if value else None


def _float(value: str | None) -> float | None:
    return float(value) if value else None


class RedisTaskStore:
    """The `TaskStore` on a Redis server shared by every gateway replica."""

    def __init__(self, client: redis.Redis, *, ttl_s: float, prefix: str = "distinfer:tasks:") -> None:
        self._redis = client
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._prefix = prefix
        self._pending_key = prefix + "pending"
        self._running_key = prefix + "running"
        self._index_key = prefix + "index"
        self._depth_key = prefix + "depth"
        self._owners_key = prefix + "owners"
        self._next_prune = 0.0
        self._owners_backfilled = False
        self._add = client.register_script(_ADD)
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)
        self._requeue = client.register_script(_REQUEUE)

    @classmethod
    def from_url(cls, url: str, *, ttl_s: float) -> RedisTaskStore:
        # Bounded waits: a Redis that does not answer is a 503 after seconds, never a hung request.
        client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=3, socket_timeout=10)
        return cls(client, ttl_s=ttl_s)

    def _key(self, task_id: str) -> str:
        return f"{self._prefix}t:{task_id}"

    def _owner_key(self, owner: str) -> str:
        return f"{self._prefix}owner:{owner}"

    async def ping(self) -> None:
        await self._redis.ping()

    async def add(self, record: TaskRecord, *, max_pending: int) -> bool:
        fields: dict[str, str] = {
            "task_id": record.task_id,
            "kind": record.kind,
            "request": _dump(record.request),
            "priority": record.priority,
            "owner": record.owner,
            "created_at": repr(record.created_at),
            "score": repr(record.score),
            "status": record.status.value,
            "attempts": str(record.attempts),
        }
        if record.trace:
            fields["trace"] = _dump(record.trace)
        flat = [item for pair in fields.items() for item in pair]
        keys = [self._pending_key, self._index_key, self._key(record.task_id), self._depth_key]
        keys += [self._owner_key(record.owner), self._owners_key]
        args: list[str | int] = [max_pending, repr(record.score), repr(record.created_at), record.task_id]
        args += [record.priority, record.owner, *flat]
        try:
            return bool(await self._add(keys=keys, args=args))
        except redis_errors.OutOfMemoryError:  # Redis at `maxmemory`: full, as a full queue is (429, not 503)
            return False

    async def claim(self, *, now: float, lease_until: float, worker: str) -> TaskRecord | None:
        keys = [self._pending_key, self._running_key, self._depth_key]
        task_id = await self._claim(keys=keys, args=[repr(now), repr(lease_until), self._prefix + "t:", worker])
        if task_id is None:
            return None
        raw: dict[str, str] = await self._redis.hgetall(self._key(str(task_id)))  # type: ignore[assignment]
        return self._record(raw)

    @staticmethod
    def _record(raw: Mapping[str, str]) -> TaskRecord | None:
        if not raw or "task_id" not in raw:
            return None
        return TaskRecord(
            task_id=raw["task_id"],
            kind=raw["kind"],
            request=_load(raw.get("request")) or {},
            priority=raw["priority"],
            owner=raw["owner"],
            created_at=float(raw["created_at"]),
            score=float(raw["score"]),
            status=TaskStatus(raw["status"]),
            attempts=int(raw.get("attempts", "0")),
            handovers=int(raw.get("handovers", "0")),
            trace=_load(raw.get("trace")),
            started_at=_float(raw.get("started_at")),
            finished_at=_float(raw.get("finished_at")),
            result=_load(raw.get("result")),
            error=_load(raw.get("error")),
            worker=raw.get("worker") or None,
        )

    async def get(self, task_id: str) -> TaskRecord | None:
        """The record without its request (`request` is {}): what the API shows."""
        row: list[str | None] = await self._redis.hmget(self._key(task_id), _SHOWN)  # type: ignore[assignment]
        return self._record({key: value for key, value in zip(_SHOWN, row, strict=True) if value is not None})

    async def find(self, *, status: TaskStatus | None, owner: str | None, limit: int) -> list[TaskRecord]:
        # An owner's listing reads the owner's own index: scanning the shared one, a caller's tasks
        # fell out of reach behind 1,000 newer tasks of others (Regression, audit).
        index = self._index_key if owner is None else self._owner_key(owner)
        found: list[TaskRecord] = []
        start = 0
        # A status filter reads one field per task until it has enough: it once read whole rows of
        # at most 1,000 to 2,000 tasks, and older matches were missing (Regression, audit).
        page = _FILTERED_PAGE if status is not None else max(50, limit)
        while len(found) < limit and start < _MAX_SCANNED:  # a bounded scan, newest first
            ids: list[str] = await self._redis.zrevrange(index, start, start + page - 1)  # type: ignore[assignment]
            if not ids:
                break
            start += len(ids)
            if status is not None:
                ids, gone = await self._with_status(ids, status)
                if gone:
                    await self._forget(gone)
                    start -= len(gone)
            async with self._redis.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hmget(self._key(task_id), _LISTED)  # not the request nor the result: a listing shows neither
                rows = await pipe.execute()
            raws = [{k: v for k, v in zip(_LISTED, row, strict=True) if v is not None} for row in rows]
            gone = [task_id for task_id, raw in zip(ids, raws, strict=True) if not raw]
            if gone:
                await self._forget(gone)
                start -= len(gone)
            for raw in raws:
                record = self._record(raw)
                if record and record.matches(status=status, owner=owner):
                    found.append(record)
        return found[:limit]

    async def _with_status(self, ids: list[str], status: TaskStatus) -> tuple[list[str], list[str]]:
        """Of `ids`, those whose task has `status` now, and those whose record has expired."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(self._key(task_id), "status")
            statuses: list[str | None] = await pipe.execute()
        matching = [task_id for task_id, now in zip(ids, statuses, strict=True) if now == status.value]
        return matching, [task_id for task_id, now in zip(ids, statuses, strict=True) if now is None]

    async def finish(
        self,
        task_id: str,
        status: TaskStatus,
        *,
        now: float,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        keys = [self._running_key, self._key(task_id)]
        args = [task_id, status.value, repr(now), _dump(result), _dump(error), self._ttl_ms]
        return bool(await self._finish(keys=keys, args=args))

    async def cancel(self, task_id: str, *, now: float) -> TaskStatus | None:
        keys = [self._pending_key, self._running_key, self._key(task_id), self._depth_key]
        before = await self._cancel(keys=keys, args=[task_id, repr(now), self._ttl_ms])
        return None if before is None else TaskStatus(str(before))

    async def _move_back(self, task_ids: list[str], *, handover: bool) -> list[str]:
        if not task_ids:
            return []
        keys = [self._pending_key, self._running_key, self._depth_key]
        moved = await self._requeue(keys=keys, args=[self._prefix + "t:", "1" if handover else "0", *task_ids])
        return [str(task_id) for task_id in moved]

    async def requeue(self, task_id: str) -> bool:
        return bool(await self._move_back([task_id], handover=True))

    async def renew(self, task_ids: Iterable[str], *, lease_until: float) -> None:
        ids = list(task_ids)
        if ids:
            await self._redis.zadd(self._running_key, dict.fromkeys(ids, lease_until), xx=True)

    async def reclaim_expired(self, *, now: float) -> list[str]:
        expired: list[str] = await self._redis.zrangebyscore(  # type: ignore[assignment]
            self._running_key, "-inf", now, start=0, num=100
        )
        if not self._owners_backfilled:  # once per gateway, on its first pass
            self._owners_backfilled = True
            await self._backfill_owners()
        if now >= self._next_prune:
            self._next_prune = now + _PRUNE_EVERY_S
            await self._prune_index()
        return await self._move_back(expired, handover=False)  # its gateway died: that start counts

    async def _prune_index(self, *, batch: int = 500, batches: int = 20) -> int:
        """Forget index entries whose records have expired, oldest first; how many were forgotten.

        A pass walks on while its batches still find expired entries (an old task still alive is
        stepped over), at most `batch` times `batches` entries, so it keeps up with any submission rate
        the store itself can take (checking only the 50 oldest every 5 s let the index grow by ~90
        entries a second at 100 tasks/s).
        """
        start, forgotten = 0, 0
        for _ in range(batches):
            ids: list[str] = await self._redis.zrange(self._index_key, start, start + batch - 1)  # type: ignore[assignment]
            if not ids:
                break
            async with self._redis.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.exists(self._key(task_id))
                alive = await pipe.execute()
            gone = [task_id for task_id, exists in zip(ids, alive, strict=True) if not exists]
            if gone:
                await self._forget(gone)
                forgotten += len(gone)
            if len(gone) < len(ids) // 10:  # mostly live tasks from here on: the rest waits for the next pass
                break
            start += len(ids) - len(gone)
        return forgotten

    async def _backfill_owners(self, *, batch: int = 500) -> int:
        """Put in their owners' indexes the tasks that a gateway older than those indexes submitted
        (they were listed for admins but not for their owners); how many it put there."""
        added, cursor = 0, 0
        while True:
            cursor, scanned = await self._redis.zscan(self._index_key, cursor, count=batch)
            entries: list[tuple[str, float]] = [(str(task_id), float(created)) for task_id, created in scanned]
            if entries:
                ids = [task_id for task_id, _ in entries]
                known: list[str | None] = await self._redis.hmget(self._owners_key, ids)  # type: ignore[assignment]
                missing = [(i, created) for (i, created), owner in zip(entries, known, strict=True) if owner is None]
                if missing:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for task_id, _ in missing:
                            pipe.hget(self._key(task_id), "owner")
                        owners = await pipe.execute()
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for (task_id, created), owner in zip(missing, owners, strict=True):
                            if owner is not None:  # None: expired meanwhile, pruned as usual
                                pipe.zadd(self._owner_key(owner), {task_id: created})
                                pipe.hset(self._owners_key, task_id, owner)
                                added += 1
                        await pipe.execute()
            if not cursor:
                return added

    async def _forget(self, task_ids: list[str]) -> None:
        """Drop expired records' ids from the shared index and from their owners' indexes."""
        owners: list[str | None] = await self._redis.hmget(self._owners_key, task_ids)  # type: ignore[assignment]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._index_key, *task_ids)
            for task_id, owner in zip(task_ids, owners, strict=True):
                if owner is not None:
                    pipe.zrem(self._owner_key(owner), task_id)
            pipe.hdel(self._owners_key, *task_ids)
            await pipe.execute()

    async def statuses(self, task_ids: Iterable[str]) -> Mapping[str, TaskStatus | None]:
        ids = list(task_ids)
        if not ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hget(self._key(task_id), "status")
            found = await pipe.execute()
        return {i: (TaskStatus(s) if s else None) for i, s in zip(ids, found, strict=True)}

    async def pending(self) -> PendingSnapshot:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self._pending_key)
            pipe.hgetall(self._depth_key)
            pipe.zrange(self._pending_key, 0, 0)
            depth, counts, head = await pipe.execute()
        by_priority = {name: max(0, int(counts.get(name, 0))) for name in PRIORITY_RANK}
        head_created_at = None
        if head:
            head_created_at = _float(str(await self._redis.hget(self._key(head[0]), "created_at") or ""))
        return PendingSnapshot(int(depth), by_priority, head_created_at)

    async def close(self) -> None:
        await self._redis.aclose()
