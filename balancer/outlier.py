"""Passive outlier detection: when a node's own answers say it is sick, and for how long to eject it.

A node trips after `consecutive_failures` system failures in a row, or when at least
`min_requests` calls in the last `window_s` failed at `error_rate` or more (Envoy's consecutive
5xx and failure-percentage detectors). Each trip ejects it for `base_ejection_s` doubled per trip
in a row, capped at `max_ejection_s`; the count of trips is forgotten once the node has stayed
healthy for `max_ejection_s`. Only system failures count (connect, timeout, 5xx), never a 4xx.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["EjectionPolicy", "FailureWindow"]


@dataclass(frozen=True, slots=True)
class EjectionPolicy:
    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_requests: int = 10
    window_s: float = 10.0
    base_ejection_s: float = 5.0
    max_ejection_s: float = 120.0
    half_open_trials: int = 1

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or self.min_requests < 1 or self.half_open_trials < 1:
            raise ValueError("consecutive_failures, min_requests and half_open_trials must be at least 1")
        if not 0 < self.error_rate <= 1:
            raise ValueError("error_rate must be in (0, 1]")
        if self.window_s <= 0 or self.base_ejection_s <= 0 or self.max_ejection_s < self.base_ejection_s:
            raise ValueError("window_s and base_ejection_s must be positive, max_ejection_s >= base_ejection_s")

    def ejection_s(self, trips: int) -> float:
        """How long the `trips`-th trip in a row ejects for: doubling from the base, capped."""
        return min(self.base_ejection_s * 2.0 ** max(trips - 1, 0), self.max_ejection_s)


class FailureWindow:
    """Outcomes of the last `window_s` seconds, bounded to `max_entries` (oldest dropped)."""

    def __init__(self, window_s: float, *, max_entries: int = 1024) -> None:
        self._window_s = window_s
        self._max_entries = max_entries
        self._entries: deque[tuple[float, bool]] = deque()
        self._failures = 0

    def _trim(self, now: float) -> None:
        horizon = now - self._window_s
        while self._entries and self._entries[0][0] < horizon:
            self._failures -= self._entries.popleft()[1]

    def add(self, now: float, *, failed: bool) -> None:
        self._trim(now)
        if len(self._entries) == self._max_entries:
            self._failures -= self._entries.popleft()[1]
        self._entries.append((now, failed))
        self._failures += failed

    def counts(self, now: float) -> tuple[int, int]:
        """(calls, failures) within the window."""
        self._trim(now)
        return len(self._entries), self._failures

    def clear(self) -> None:
        self._entries.clear()
        self._failures = 0
