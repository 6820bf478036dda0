"""Running a batch: many calls, at most `max_concurrency` node requests at once, results as they finish.

Every item ends as its own `Outcome` or its own error; one failing item never fails another.
`stream()` yields `(index, result)` in completion order (the SSE progress of a long batch);
`run()` returns the results in request order. Leaving `stream()` early (a client that hung up)
cancels the work still in flight. `timeout_s` bounds the whole batch, waits for a slot included:
an item whose turn comes after it is a 504 without a node call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import replace

from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import DeadlineExceeded, DistinferError
from gateway_plugin.orchestration.calls import Deadline, ItemResult, call_within
from gateway_plugin.orchestration.coalesce import Group, Infer, merge, plan, split

__all__ = ["BatchRunner"]

log = logging.getLogger(__name__)


class BatchRunner:
    """Composes `Dispatcher.infer`; `max_rows(model)` says how many rows one request may carry."""

    def __init__(
        self, infer: Infer, *, max_rows: Callable[[str], int], clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._infer = infer
        self._max_rows = max_rows
        self._clock = clock

    async def run(
        self,
        items: Sequence[InferenceCall | DistinferError],
        *,
        max_concurrency: int,
        coalesce: bool = True,
        spread: int = 1,
        batch_id: str = "batch",
        timeout_s: float | None = None,
    ) -> list[ItemResult]:
        results: list[ItemResult | None] = [None] * len(items)
        stream = self.stream(
            items,
            max_concurrency=max_concurrency,
            coalesce=coalesce,
            spread=spread,
            batch_id=batch_id,
            timeout_s=timeout_s,
        )
        async with contextlib.aclosing(stream) as finished:
            async for index, result in finished:
                results[index] = result
        return [r if r is not None else DistinferError("item was never run") for r in results]

    async def stream(
        self,
        items: Sequence[InferenceCall | DistinferError],
        *,
        max_concurrency: int,
        coalesce: bool = True,
        spread: int = 1,
        batch_id: str = "batch",
        timeout_s: float | None = None,
    ) -> AsyncGenerator[tuple[int, ItemResult], None]:
        deadline = Deadline("batch", self._clock(), timeout_s)
        calls: list[InferenceCall] = []
        positions: list[int] = []
        refused: list[tuple[int, DistinferError]] = []
        for index, item in enumerate(items):
            if isinstance(item, DistinferError):
                refused.append((index, item))
            else:
                calls.append(item)
                positions.append(index)
        groups = plan(calls, self._max_rows if coalesce else _no_rows, spread=spread)
        done: asyncio.Queue[tuple[int, ItemResult]] = asyncio.Queue()
        slots = asyncio.Semaphore(max(1, max_concurrency))
        tasks = [
            asyncio.create_task(self._guarded(calls, group, slots, done, f"{batch_id}-g{number}", deadline))
            for number, group in enumerate(groups)
        ]
        try:
            for index, error in refused:  # the work is already under way while these are reported
                yield index, error
            for _ in calls:
                index, result = await done.get()
                yield positions[index], result
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _guarded(
        self,
        calls: Sequence[InferenceCall],
        group: Group,
        slots: asyncio.Semaphore,
        done: asyncio.Queue[tuple[int, ItemResult]],
        request_id: str,
        deadline: Deadline,
    ) -> None:
        """Whatever goes wrong in a group, every member gets an answer: the consumer never hangs."""
        answered: set[int] = set()

        def report(index: int, result: ItemResult) -> None:
            answered.add(index)
            done.put_nowait((index, result))

        try:
            await self._run_group(calls, group, slots, report, request_id, deadline)
        except Exception:
            log.exception("batch group %s failed", request_id)
        for index in group.members:
            if index not in answered:
                report(index, DistinferError("unexpected error; see the gateway log"))

    async def _run_group(
        self,
        calls: Sequence[InferenceCall],
        group: Group,
        slots: asyncio.Semaphore,
        report: Callable[[int, ItemResult], None],
        request_id: str,
        deadline: Deadline,
    ) -> None:
        if group.single:
            index = group.members[0]
            async with slots:
                result = await self._within(calls[index], deadline)
            report(index, result)
            return
        started = self._clock()
        async with slots:
            merged = await self._within(merge(calls, group, request_id), deadline)
        if isinstance(merged, Outcome):
            parts = split(merged, calls, group)
            if parts is not None:
                for index, part in zip(group.members, parts, strict=True):
                    report(index, part)
                return
        elif isinstance(merged, DeadlineExceeded):
            for index in group.members:
                report(index, merged)
            return
        # Someone's rows may have broken the merged call: find out whose by running each alone.
        elapsed = self._clock() - started
        await asyncio.gather(
            *(self._alone(index, calls[index], elapsed, slots, report, deadline) for index in group.members),
        )

    async def _within(self, call: InferenceCall, deadline: Deadline) -> ItemResult:
        """The call, cut to what is left of the batch's deadline; none at all once it is spent."""
        remaining = deadline.remaining(self._clock())
        if remaining <= 0:
            return deadline.spent()
        return await call_within(self._infer, call, remaining)

    async def _alone(
        self,
        index: int,
        call: InferenceCall,
        elapsed: float,
        slots: asyncio.Semaphore,
        report: Callable[[int, ItemResult], None],
        deadline: Deadline,
    ) -> None:
        remaining = call.timeout_s - elapsed
        if remaining <= 0:
            report(index, DeadlineExceeded(f"deadline of {call.timeout_s * 1000:.0f} ms spent"))
            return
        async with slots:
            result = await self._within(replace(call, timeout_s=remaining), deadline)
        report(index, result)


def _no_rows(model: str) -> int:
    return 0
