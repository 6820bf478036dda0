"""When a failed attempt is tried again on another node."""

from __future__ import annotations

from dataclasses import dataclass

from worker.errors import NodeCallError

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry connection errors, timeouts and 5xx on a different node, up to `max_attempts` in all.

    A 4xx means the request itself is wrong: sending it elsewhere cannot help, so it never retries.
    """

    max_attempts: int = 2

    def should_retry(self, error: NodeCallError, attempts_made: int) -> bool:
        return error.retryable and attempts_made < self.max_attempts
