"""Admission control for synchronous requests: beyond `max_inflight` at once, answer 429 at once.

A gateway that queues without bound only turns overload into timeouts for everyone; refusing
early with `Retry-After` lets clients (and load balancers in front of us) back off or go elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway_plugin.errors import TooManyRequests

__all__ = ["InflightLimiter", "Place", "Saturated", "admitted"]


class Saturated(TooManyRequests):
    code, title = "saturated", "Gateway saturated"


class InflightLimiter:
    """Counts requests in progress; `limit` 0 means no limit."""

    def __init__(self, limit: int, *, retry_after_s: int = 1) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.refused = 0

    def check(self) -> None:
        """Raise Saturated (429) when there is no place now."""
        if self.limit and self.in_flight >= self.limit:
            self.refused += 1
            raise Saturated(
                f"the gateway is at its limit of {self.limit} requests in flight", retry_after_s=self.retry_after_s
            )

    def enter(self, *, force: bool = False) -> None:
        """Take a place (`force`: even beyond the limit, already checked); pair each with one `leave`."""
        if not force:
            self.check()
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1

    def take(self) -> Place:
        """A place for a response that outlives its handler (an event stream): give it back with `release`."""
        self.enter()
        return Place(self)

    @contextmanager
    def admit(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()


class Place:
    """One place taken in a limiter; `release` gives it back once, however often it is called.

    An event stream ends on one of several paths (its events run out, the client leaves before
    they start, opening its node stream fails): each may release, exactly one place goes back.
    """

    def __init__(self, limiter: InflightLimiter) -> None:
        self._limiter: InflightLimiter | None = limiter

    def release(self) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter.leave()


@contextmanager
def admitted(limiter: InflightLimiter | None) -> Iterator[None]:
    """`limiter.admit()`, or nothing when there is no limiter."""
    if limiter is None:
        yield
        return
    with limiter.admit():
        yield
