"""Observed latency of one node: a peak-sensitive EWMA for balancing and a small window for p95.

`PeakEwma` is the cost Finagle's and Linkerd's "peak EWMA" balancers use: a slower answer than
the average replaces it at once (a node that turns slow is avoided at once), a faster one is
blended in with a weight that decays with the time since the last observation (`decay_s`).
Reading it also decays it toward zero with idle time, so a node that was slow and stopped getting
traffic is tried again after a while instead of being shunned forever.

Finagle uses one time constant (10 s) for both. Measured here (`distinfer bench balance`, 2 busy
cores) that made every fast node's cost the peak of its last several seconds: scheduling hiccups
of 3-5x kept fast nodes as expensive as a node that is 10x slower all the time. So blending is
fast (`decay_s`, 1 s: a hiccup fades with a 1 s time constant under traffic) and the idle decay
slow (`idle_decay_s`, 10 s: a shunned node gets a trial request every few seconds, not a stream).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

__all__ = ["Clock", "LatencyWindow", "PeakEwma"]

Clock = Callable[[], float]


class PeakEwma:
    def __init__(self, clock: Clock, *, decay_s: float = 1.0, idle_decay_s: float | None = None) -> None:
        if decay_s <= 0 or (idle_decay_s is not None and idle_decay_s <= 0):
            raise ValueError("decay_s and idle_decay_s must be positive")
        self._clock = clock
        self._decay_s = decay_s
        self._idle_decay_s = idle_decay_s if idle_decay_s is not None else 10 * decay_s
        self._value: float | None = None
        self._stamp = 0.0

    def observe(self, seconds: float) -> None:
        now = self._clock()
        if self._value is None or seconds > self._value:
            self._value = seconds
        else:
            weight = math.exp(-max(now - self._stamp, 0.0) / self._decay_s)
            self._value = self._value * weight + seconds * (1.0 - weight)
        self._stamp = now

    def value(self) -> float | None:
        """Seconds, decayed by the idle time since the last observation; None before any."""
        if self._value is None:
            return None
        idle = max(self._clock() - self._stamp, 0.0)
        return self._value * math.exp(-idle / self._idle_decay_s)

    def reset(self) -> None:
        self._value = None


class LatencyWindow:
    """The last `size` latencies of one node, for its p95 (hedging's "after the node's p95")."""

    def __init__(self, size: int = 128, *, min_samples: int = 16) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._min_samples = min_samples
        self._cached: float | None = None
        self._since_cache = 0

    def observe(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._since_cache += 1

    def quantile(self, q: float = 0.95) -> float | None:
        """None until `min_samples` are in; recomputed at most every 8 observations (it sorts)."""
        if len(self._samples) < self._min_samples:
            return None
        if self._cached is None or self._since_cache >= 8:
            ordered = sorted(self._samples)
            self._cached = ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]
            self._since_cache = 0
        return self._cached
