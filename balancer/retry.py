"""When a failed attempt is tried again on another node, and how many retries the cluster can take.

`RetryPolicy` says whether an error may be retried at all (connection errors, timeouts and 5xx,
up to `max_attempts`; never a 4xx). `RetryBudget` bounds retries (and hedges) across all requests
to a share of the traffic, Finagle-style: over the last `window_s`, retries may add at most
`ratio` of the requests plus a floor of `min_per_s` per second, so a sick cluster gets a bounded
extra load instead of a stampede of retries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from balancer.latency import Clock
from worker.errors import NodeCallError

__all__ = ["RetryBudget", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry connection errors, timeouts and 5xx on a different node, up to `max_attempts` in all.

    A 4xx means the request itself is wrong: sending it elsewhere cannot help, so it never retries.
    """

    max_attempts: int = 2

    def should_retry(self, error: NodeCallError, attempts_made: int) -> bool:
        return error.retryable and attempts_made < self.max_attempts


class _SecondBuckets:
    """Counts per whole second over a sliding window of `seconds` buckets (bounded memory)."""

    def __init__(self, seconds: int) -> None:
        self._counts = [0] * seconds
        self._stamps = [-1] * seconds

    def add(self, now: float) -> None:
        second = math.floor(now)
        slot = second % len(self._counts)
        if self._stamps[slot] != second:
            self._stamps[slot], self._counts[slot] = second, 0
        self._counts[slot] += 1

    def remove(self, now: float) -> None:
        second = math.floor(now)
        slot = second % len(self._counts)
        if self._stamps[slot] == second and self._counts[slot] > 0:
            self._counts[slot] -= 1

    def total(self, now: float) -> int:
        oldest = math.floor(now) - len(self._counts)
        return sum(count for count, stamp in zip(self._counts, self._stamps, strict=True) if stamp > oldest)


class RetryBudget:
    def __init__(self, clock: Clock, *, ratio: float = 0.2, min_per_s: float = 10.0, window_s: int = 10) -> None:
        if ratio < 0 or min_per_s < 0 or window_s < 1:
            raise ValueError("ratio and min_per_s must be >= 0 and window_s >= 1")
        self._clock = clock
        self._ratio = ratio
        self._reserve = min_per_s * window_s
        self._requests = _SecondBuckets(window_s)
        self._retries = _SecondBuckets(window_s)
        self.refused = 0  # retries the budget turned down since start (for /stats and metrics)

    def deposit(self) -> None:
        """One original request was made."""
        self._requests.add(self._clock())

    def withdraw(self) -> bool:
        """Take one retry (or hedge) from the budget; False when it is spent."""
        now = self._clock()
        if self._retries.total(now) >= self._reserve + self._ratio * self._requests.total(now):
            self.refused += 1
            return False
        self._retries.add(now)
        return True

    def refund(self) -> None:
        """Give back a retry taken but not sent (no node to send it to)."""
        self._retries.remove(self._clock())
