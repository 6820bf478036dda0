"""A circuit breaker per node: `closed → open → half_open → closed | open`, on an injected monotonic clock.

closed: traffic flows; outcomes feed the outlier detector (`outlier.EjectionPolicy`), which trips
the breaker. open: the node is ejected for the policy's growing backoff. half_open: once that has
passed, up to `half_open_trials` trial requests may go; a success closes the breaker, a failure
opens it again for a longer time. Only system failures count (connect, timeout, 5xx): the pool
never reports a 4xx as a failure. The open → half_open step happens when the breaker is asked,
so nothing needs a timer.

Whoever caches what `allows()` says (the pool's pickers) passes `on_change`: it is called when
admission may have changed for any reason but time (a trip, a close, the trial slots filling up or
freeing). The one timed step, open → half_open, is announced in advance by `reopens_at`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from balancer.latency import Clock
from balancer.outlier import EjectionPolicy, FailureWindow

__all__ = ["BreakerSnapshot", "BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    state: BreakerState
    trips: int
    open_for_s: float  # left of the current ejection; 0 unless open


class CircuitBreaker:
    def __init__(self, policy: EjectionPolicy, clock: Clock, *, on_change: Callable[[], None] | None = None) -> None:
        self._policy = policy
        self._clock = clock
        self._on_change = on_change
        self._state = BreakerState.CLOSED
        self._window = FailureWindow(policy.window_s)
        self._consecutive = 0
        self._trips = 0
        self._open_until = 0.0
        self._closed_at = clock()
        self._trials = 0

    @property
    def state(self) -> BreakerState:
        self._advance(self._clock())
        return self._state

    def snapshot(self) -> BreakerSnapshot:
        now = self._clock()
        self._advance(now)
        left = self._open_until - now if self._state is BreakerState.OPEN else 0.0
        return BreakerSnapshot(self._state, self._trips, round(max(left, 0.0), 3))

    @property
    def half_open(self) -> bool:
        """Half-open as of the last look (no clock read: for a snapshot just built from `allows()`)."""
        return self._state is BreakerState.HALF_OPEN

    @property
    def reopens_at(self) -> float | None:
        """While open, the clock reading at which it turns half-open (and admits trials); else None."""
        return self._open_until if self._state is BreakerState.OPEN else None

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _advance(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._state = BreakerState.HALF_OPEN
            self._trials = 0

    def allows(self) -> bool:
        """Whether a request may go now (closed, or half-open with a trial slot free)."""
        self._advance(self._clock())
        if self._state is BreakerState.CLOSED:
            return True
        return self._state is BreakerState.HALF_OPEN and self._trials < self._policy.half_open_trials

    @property
    def wants_trial(self) -> bool:
        """Half-open with a free slot: the pool sends the next request here so recovery is noticed soon."""
        return self.allows() and self._state is BreakerState.HALF_OPEN

    def acquire(self) -> bool:
        """A request was sent; True when it is a half-open trial (release it if it ends without outcome)."""
        if self.state is BreakerState.HALF_OPEN:
            self._trials += 1
            if self._trials == self._policy.half_open_trials:
                self._changed()  # the last trial slot is taken: no more traffic until an outcome
            return True
        return False

    def release_trial(self) -> None:
        full = self._trials >= self._policy.half_open_trials
        self._trials = max(self._trials - 1, 0)
        if full and self._state is BreakerState.HALF_OPEN and self._trials < self._policy.half_open_trials:
            self._changed()  # a slot is free again

    def record_success(self, *, trial: bool = False) -> None:
        now = self._clock()
        self._advance(now)
        if self._state is BreakerState.HALF_OPEN:
            if not trial:
                return  # a request sent before the trip tells nothing about the node now
            self._state = BreakerState.CLOSED
            self._closed_at = now
            self._trials = 0
            self._changed()
        if self._state is BreakerState.CLOSED:
            self._consecutive = 0
            self._window.add(now, failed=False)

    def record_failure(self, *, trial: bool = False) -> None:
        now = self._clock()
        self._advance(now)
        if self._state is BreakerState.HALF_OPEN:
            if trial:
                self._trip(now)
            return
        if self._state is BreakerState.OPEN:
            return
        self._consecutive += 1
        self._window.add(now, failed=True)
        calls, failures = self._window.counts(now)
        policy = self._policy
        by_rate = calls >= policy.min_requests and failures >= policy.error_rate * calls
        if self._consecutive >= policy.consecutive_failures or by_rate:
            self._trip(now)

    def _trip(self, now: float) -> None:
        if self._state is BreakerState.CLOSED and now - self._closed_at >= self._policy.max_ejection_s:
            self._trips = 0  # healthy for long enough: start the backoff over
        self._trips += 1
        self._state = BreakerState.OPEN
        self._open_until = now + self._policy.ejection_s(self._trips)
        self._consecutive = 0
        self._trials = 0
        self._window.clear()
        self._changed()
