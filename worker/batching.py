"""Dynamic batching: concurrent requests for one model are stacked into one runtime call and split back.

As in Triton and MLServer: a request waits at most `max_queue_delay_ms` for company; a batch goes
as soon as it reaches `max_batch_size` rows or a preferred size. Only requests whose non-batch
dimensions agree are stacked together. While every runtime slot is busy, requests queue up and
the next batch takes them all, so batches grow with load and not with idle waiting.

If a stacked call fails, each request is run again alone, so one bad request fails only itself:
every caller gets exactly its own rows, or its own error.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from worker.errors import ModelNotReady
from worker.runtimes.base import Arrays

__all__ = ["BatchPolicy", "DynamicBatcher", "RunObserver"]

Outputs = dict[str, np.ndarray[Any, Any]]
RunFn = Callable[[Arrays], Outputs]


class RunObserver(Protocol):
    """Told about every runtime call and every queue wait (node metrics and spans)."""

    def runtime_call(self, rows: int, seconds: float) -> None: ...

    def queued(self, arrived: float, started: float) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_s: float = 0.002
    preferred_batch_sizes: tuple[int, ...] = ()
    max_concurrent_batches: int = 1


@dataclass(slots=True)
class _Pending:
    feeds: Arrays
    rows: int
    signature: tuple[object, ...]
    future: asyncio.Future[Outputs]
    arrived: float = field(default_factory=time.monotonic)
    started: float = 0.0


def _signature(feeds: Arrays) -> tuple[object, ...]:
    return tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(feeds.items()))


class DynamicBatcher:
    """One per batchable model. `submit()` from request handlers; `run()` as a lifespan-owned task."""

    def __init__(
        self, run: RunFn, executor: Executor, policy: BatchPolicy, observer: RunObserver | None = None
    ) -> None:
        self._run = run
        self._observer = observer
        self._executor = executor
        self._policy = policy
        self._queue: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(policy.max_concurrent_batches)
        self._batches: set[asyncio.Task[None]] = set()
        self._holding = False  # a batch taken from the queue, still waiting for company
        self._settled = asyncio.Event()  # set as a batch ends or the queue runs dry: `idle` may have become true
        self.batch_sizes: deque[int] = deque(maxlen=1024)  # recent batch sizes, for metrics and tests

    async def submit(self, feeds: Arrays) -> Outputs:
        rows = next(iter(feeds.values())).shape[0]
        if rows > self._policy.max_batch_size:
            raise ValueError(f"{rows} rows is over max_batch_size {self._policy.max_batch_size}")
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        pending = _Pending(feeds, rows, _signature(feeds), future)
        self._queue.append(pending)
        self._arrived.set()
        outputs = await future
        if self._observer is not None:
            self._observer.queued(pending.arrived, pending.started)  # here, in the caller's trace context
        return outputs

    @property
    def depth(self) -> int:
        """Requests waiting for a batch now."""
        return len(self._queue)

    @property
    def idle(self) -> bool:
        """No request queued, being collected into a batch, or running: stopping now ends nobody's call."""
        return not self._queue and not self._batches and not self._holding

    async def wait_idle(self) -> None:
        """Return once `idle`: every call submitted so far has its answer."""
        while not self.idle:
            self._settled.clear()
            await self._settled.wait()

    async def run(self) -> None:
        try:
            while True:
                await self._slots.acquire()
                batch = await self._collect()
                task = asyncio.create_task(self._execute(batch))
                self._batches.add(task)
                self._holding = False
                task.add_done_callback(self._batch_done)
        finally:
            for task in list(self._batches):
                task.cancel()
            _end_waiting(self._queue)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        self._settled.set()

    async def _next_live(self) -> _Pending:
        while True:
            while not self._queue:
                self._settled.set()
                self._arrived.clear()
                await self._arrived.wait()
            first = self._queue.popleft()
            if not first.future.cancelled():
                return first

    async def _collect(self) -> list[_Pending]:
        """The oldest live request and every compatible one that fits, waiting at most the delay."""
        first = await self._next_live()
        self._holding = True
        batch, rows = [first], first.rows
        deadline = first.arrived + self._policy.max_queue_delay_s
        preferred = set(self._policy.preferred_batch_sizes)
        while rows < self._policy.max_batch_size and rows not in preferred:
            rows = self._take_compatible(batch, rows)
            if rows >= self._policy.max_batch_size or rows in preferred:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                async with asyncio.timeout(remaining):  # not wait_for: on 3.11 it can drop a cancel
                    await self._arrived.wait()
            except TimeoutError:
                pass
            except asyncio.CancelledError:  # stopped: the requests taken out of the queue end too
                _end_waiting(batch)
                raise
        return batch

    def _take_compatible(self, batch: list[_Pending], rows: int) -> int:
        signature = batch[0].signature
        kept: deque[_Pending] = deque()
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.cancelled():
                continue
            if pending.signature == signature and rows + pending.rows <= self._policy.max_batch_size:
                batch.append(pending)
                rows += pending.rows
            else:
                kept.append(pending)
        self._queue.extendleft(reversed(kept))
        return rows

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            live = [p for p in batch if not p.future.cancelled()]
            if not live:
                return
            rows = sum(p.rows for p in live)
            self.batch_sizes.append(rows)
            started = time.monotonic()
            for pending in live:
                pending.started = started
            if len(live) == 1:
                await self._run_alone(live[0])
                return
            try:
                stacked = {name: np.concatenate([p.feeds[name] for p in live]) for name in live[0].feeds}
                outputs = await loop.run_in_executor(self._executor, self._run, stacked)
                if self._observer is not None:
                    self._observer.runtime_call(rows, time.monotonic() - started)
            except Exception:
                # Somebody's rows broke the stacked call; find out whose by running each alone.
                for pending in live:
                    await self._run_alone(pending)
                return
            self._split(live, outputs)
        except Exception as exc:
            # Whatever went wrong, no caller may be left waiting.
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        except asyncio.CancelledError:  # the batcher stops while this batch runs: its callers end too
            _end_waiting(batch)
            raise
        finally:
            self._slots.release()

    async def _run_alone(self, pending: _Pending) -> None:
        try:
            started = time.monotonic()
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._run, pending.feeds)
            if self._observer is not None:
                self._observer.runtime_call(pending.rows, time.monotonic() - started)
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(result)

    @staticmethod
    def _split(live: list[_Pending], outputs: Outputs) -> None:
        total = sum(p.rows for p in live)
        if any(value.shape[:1] != (total,) for value in outputs.values()):
            error = ValueError("model outputs do not keep the batch dimension; cannot split a stacked batch")
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        start = 0
        for pending in live:
            end = start + pending.rows
            if not pending.future.done():
                pending.future.set_result({name: value[start:end] for name, value in outputs.items()})
            start = end


def _end_waiting(pending: Iterable[_Pending]) -> None:
    """The batcher stops: every caller still waiting gets a 503 it may retry on another node."""
    for waiting in pending:
        if not waiting.future.done():
            stopped = "the model's batcher stopped: the model was unloaded or the node is shutting down"
            waiting.future.set_exception(ModelNotReady(stopped))
