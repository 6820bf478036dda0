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

Time alone still ignores how much evidence came in: a node answering 200 requests a second in
10 ms kept a 60 ms peak for most of a second. The peaks that matter most are ones the node did
not cause: a pause of the gateway itself (in `bench balance` a full garbage collection of its heap,
45-90 ms every 1-2 s, and the other work on the shared cores) adds to every request in flight,
which are all on the nodes in use and none on a shunned one, so after each pause the fast nodes
looked as slow as the 10x-slower node and it got requests. With `samples`, a faster answer always
blends in with at least 1/`samples` of the weight: under traffic a peak fades after about that
many faster answers, and after `decay_s` when answers are few, as before.

Besides the peak-sensitive `value()` it keeps `mean()`, the same average without the peaks, and
`load()`: each observation carries the load it was made under (the node's requests in flight when
the request was sent, itself included), blended with the same weights, so it is the load those
latencies were observed at. A peak does not reset it: one unlucky request sent alone must not
make the node's usual queue look like none. `NodePool.latency_cost` says how the three combine.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

__all__ = ["Clock", "LatencyWindow", "PeakEwma"]

Clock = Callable[[], float]


class PeakEwma:
    def __init__(
        self,
        clock: Clock,
        *,
        decay_s: float = 1.0,
        idle_decay_s: float | None = None,
        samples: int | None = None,
    ) -> None:
        if decay_s <= 0 or (idle_decay_s is not None and idle_decay_s <= 0):
            raise ValueError("decay_s and idle_decay_s must be positive")
        if samples is not None and samples < 1:
            raise ValueError("samples must be at least 1")
        self._clock = clock
        self._decay_s = decay_s
        self._idle_decay_s = idle_decay_s if idle_decay_s is not None else 10 * decay_s
        self._least = 0.0 if samples is None else 1.0 / samples  # the least weight of a new answer
        self._value: float | None = None
        self._mean = 0.0
        self._load = 1.0
        self._stamp = 0.0

    def observe(self, seconds: float, load: float = 1.0) -> None:
        """One latency, and the load (requests in flight, this one included) its request was sent at."""
        now = self._clock()
        if self._value is None:
            self._value, self._mean, self._load = seconds, seconds, load
        else:
            fresh = max(1.0 - math.exp(-max(now - self._stamp, 0.0) / self._decay_s), self._least)
            self._value = seconds if seconds > self._value else self._value + (seconds - self._value) * fresh
            self._mean += (seconds - self._mean) * fresh
            self._load += (load - self._load) * fresh
        self._stamp = now

    def value(self) -> float | None:
        """Seconds, decayed by the idle time since the last observation; None before any."""
        return None if self._value is None else self._value * self._idle()

    def mean(self) -> float | None:
        """The same average without the peaks (a slower answer is blended, not taken), decayed alike."""
        return None if self._value is None else self._mean * self._idle()

    def _idle(self) -> float:
        return math.exp(-max(self._clock() - self._stamp, 0.0) / self._idle_decay_s)

    def load(self) -> float | None:
        """The load the latencies were observed at, weighted as they are; None before any."""
        return None if self._value is None else self._load

    def reset(self) -> None:
        self._value = None
        self._load = 1.0


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
