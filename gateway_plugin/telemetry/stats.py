"""The in-process window behind `GET /stats`: recent latencies per node and over all calls,
throughput, recent requests.

Everything is bounded: a ring of the last `per_node` attempts for each of at most `max_nodes`
nodes (the oldest node forgotten first), the latencies of the last `calls` calls, per-second
completion counts for two minutes, and the last `recent` requests. Recording is O(1); percentiles
are computed when someone asks.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["CallWindow", "NodeWindow", "StatsWindow", "percentile"]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    rank = max(math.ceil(q / 100 * len(sorted_values)), 1)
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class NodeWindow:
    samples: int
    p50_ms: float | None
    p99_ms: float | None
    error_rate: float | None


@dataclass(frozen=True, slots=True)
class CallWindow:
    """Latency of the last calls as their callers saw it: retries, fallback and failures included."""

    samples: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class StatsWindow:
    def __init__(
        self,
        *,
        per_node: int = 512,
        max_nodes: int = 1024,
        recent: int = 50,
        calls: int = 1024,
        throughput_window_s: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_node = per_node
        self._max_nodes = max_nodes
        self._nodes: OrderedDict[str, deque[tuple[float, bool]]] = OrderedDict()
        self._recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self._calls: deque[float] = deque(maxlen=calls)  # seconds
        self._seconds: deque[list[int]] = deque(maxlen=120)  # [second, count]
        self._window = throughput_window_s
        self._clock = clock
        self.started = clock()
        self.requests_total = 0
        self.errors_total = 0

    def attempt(self, node_id: str, seconds: float, ok: bool) -> None:
        ring = self._nodes.get(node_id)
        if ring is None:
            if len(self._nodes) >= self._max_nodes:
                self._nodes.popitem(last=False)
            ring = self._nodes[node_id] = deque(maxlen=self._per_node)
        ring.append((seconds, ok))

    def request(self, summary: dict[str, Any], *, ok: bool, seconds: float | None = None) -> None:
        """One finished request (`seconds` long, end to end): counted for throughput and latency,
        and kept among the recent ones."""
        self.requests_total += 1
        if seconds is not None:
            self._calls.append(seconds)
        if not ok:
            self.errors_total += 1
        second = int(self._clock())
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += 1
        else:
            self._seconds.append([second, 1])
        self._recent.append(summary)

    def forget(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    def node(self, node_id: str) -> NodeWindow:
        ring = self._nodes.get(node_id)
        if not ring:
            return NodeWindow(0, None, None, None)
        latencies = sorted(seconds for seconds, _ in ring)
        failures = sum(1 for _, ok in ring if not ok)
        return NodeWindow(
            samples=len(ring),
            p50_ms=_ms(percentile(latencies, 50)),
            p99_ms=_ms(percentile(latencies, 99)),
            error_rate=round(failures / len(ring), 4),
        )

    def calls(self) -> CallWindow:
        """Percentiles over the last calls, whichever node (or none) served them."""
        latencies = sorted(self._calls)
        return CallWindow(
            samples=len(latencies),
            p50_ms=_ms(percentile(latencies, 50)),
            p95_ms=_ms(percentile(latencies, 95)),
            p99_ms=_ms(percentile(latencies, 99)),
        )

    def throughput(self) -> float:
        """Requests per second over the last complete `throughput_window_s` seconds."""
        now = int(self._clock())
        since = now - self._window
        done = sum(count for second, count in self._seconds if since <= second < now)
        return round(done / self._window, 3)

    def recent(self) -> list[dict[str, Any]]:
        """The last requests, newest first (a wall-clock `time` becomes ISO 8601)."""
        return [
            {**row, "time": _iso(row["time"])} if isinstance(row.get("time"), float) else dict(row)
            for row in reversed(self._recent)
        ]

    def uptime_s(self) -> float:
        return round(self._clock() - self.started, 3)
