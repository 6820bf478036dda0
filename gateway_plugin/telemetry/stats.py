"""The in-process window behind `GET /stats`: recent latencies per node, throughput, recent requests.

Everything is bounded: a ring of the last `per_node` attempts for each of at most `max_nodes`
nodes (the oldest node forgotten first), per-second completion counts for two minutes, and the
last `recent` requests. Recording is O(1); percentiles are computed when someone asks.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["NodeWindow", "StatsWindow", "percentile"]


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


class StatsWindow:
    def __init__(
        self,
        *,
        per_node: int = 512,
        max_nodes: int = 1024,
        recent: int = 50,
        throughput_window_s: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_node = per_node
        self._max_nodes = max_nodes
        self._nodes: OrderedDict[str, deque[tuple[float, bool]]] = OrderedDict()
        self._recent: deque[dict[str, Any]] = deque(maxlen=recent)
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

    def request(self, summary: dict[str, Any], *, ok: bool) -> None:
        """One finished request: counted for throughput and kept among the recent ones."""
        self.requests_total += 1
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
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        return NodeWindow(
            samples=len(ring),
            p50_ms=None if p50 is None else round(p50 * 1000, 3),
            p99_ms=None if p99 is None else round(p99 * 1000, 3),
            error_rate=round(failures / len(ring), 4),
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
