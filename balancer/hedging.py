"""Hedged requests: when the first attempt is slow, send a copy to another node and keep the first answer.

The hedge goes after a fixed delay or after the node's own p95 latency (so about one request in
twenty is hedged), never before `min_after_s`. `race` runs the two attempts: the first success
wins and the other is cancelled; a failure waits for the other one; when both fail, the error of
the last one to fail is raised (a 4xx before a retryable error, since it says the request is bad).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from worker.errors import NodeCallError

__all__ = ["HedgePolicy", "race"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    enabled: bool = False
    after_s: float | None = None  # None: after the node's p95
    min_after_s: float = 0.002

    def delay_s(self, p95_s: float | None) -> float | None:
        """How long to wait for the first attempt before hedging; None: do not hedge this one."""
        if not self.enabled:
            return None
        delay = self.after_s if self.after_s is not None else p95_s
        return None if delay is None else max(delay, self.min_after_s)


async def race(
    primary: Coroutine[Any, Any, T],
    start_hedge: Callable[[], Coroutine[Any, Any, T] | None],
    delay_s: float,
) -> tuple[T, bool]:
    """The first successful result of `primary` and a hedge started after `delay_s`; (result, hedge won)."""
    first: asyncio.Task[T] = asyncio.ensure_future(primary)
    second: asyncio.Task[T] | None = None
    try:
        done, _ = await asyncio.wait({first}, timeout=delay_s)
        if done:
            return first.result(), False
        hedge = start_hedge()
        if hedge is None:
            return await first, False
        second = asyncio.ensure_future(hedge)
        pending: set[asyncio.Task[T]] = {first, second}
        errors: list[BaseException] = []
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is None:
                    return task.result(), task is second
                errors.append(error)
        raise _worst(errors)
    finally:
        await _cancel(first, second)


def _worst(errors: list[BaseException]) -> BaseException:
    rejected = [e for e in errors if isinstance(e, NodeCallError) and not e.retryable]
    return rejected[0] if rejected else errors[-1]


async def _cancel(*tasks: asyncio.Task[Any] | None) -> None:
    live = [task for task in tasks if task is not None and not task.done()]
    for task in live:
        task.cancel()
    if live:
        await asyncio.gather(*live, return_exceptions=True)
