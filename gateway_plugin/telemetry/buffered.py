"""Per-request metric updates kept as plain numbers, added to prometheus_client when scraped.

prometheus_client takes a lock and makes several calls per update (a histogram also scans its
buckets), and the relay makes about a dozen updates per request: measured with py-spy, more CPU
than the gateway's routing. Counters, gauges and histograms children handed out by
`GatewayMetrics.child` therefore count into plain numbers, and `MetricBuffer`, registered in the
registry ahead of the metrics, adds them to the real children at the start of every collection
(`generate_latest`, `get_sample_value`), so a scrape sees every update made before it.

A scrape restricted to some names (`name[]`) collects only the named metrics and so skips the
buffer: `GatewayMetrics.flush` runs on every event-loop-lag tick (0.25 s) for such readers.

Updates happen on the event loop's thread. A scrape from another thread (a host's threaded
exporter) has the flush run on that loop and waits for it, so no update is lost to a race. With
`PROMETHEUS_MULTIPROC_DIR`, values must reach the process's files at once: no buffering then.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

__all__ = ["MetricBuffer"]

_FLUSH_WAIT_S = 2.0


class _BufferedSum:
    """Increments summed up to the next flush (a counter's or a gauge's)."""

    __slots__ = ("_child", "_pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._pending = 0.0

    def flush(self) -> None:
        if self._pending:
            amount, self._pending = self._pending, 0.0
            self._child.inc(amount)


class _BufferedCounter(_BufferedSum):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self._pending += amount


class _BufferedGauge(_BufferedSum):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        self._pending += amount

    def dec(self, amount: float = 1.0) -> None:
        self._pending -= amount


class _BufferedHistogram:
    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Any, bounds: list[float]) -> None:
        self._child = child
        self._bounds = bounds  # ascending, +Inf last: a bucket counts values <= its bound
        self._counts = [0] * len(bounds)
        self._sum = 0.0

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        if any(counts):
            # prometheus_client has no bulk observe: add to the child's bucket and sum values.
            for bucket, count in zip(self._child._buckets, counts, strict=True):
                if count:
                    bucket.inc(count)
            self._child._sum.inc(total)


class MetricBuffer(Collector):
    """Hands out buffering children and flushes them when its registry collects (register it first)."""

    def __init__(self) -> None:
        self._children: list[_BufferedSum | _BufferedHistogram] = []  # replaced, never changed, by `discard`
        self._lock = threading.Lock()  # `wrap` may run in a scraping thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    def describe(self) -> list[Metric]:
        """No families of its own; without this, a registry with `auto_describe` would collect (flush) to learn that."""
        return []

    def wrap(self, metric: MetricWrapperBase, child: Any) -> Any:
        """A buffering stand-in for `metric`'s labelled `child` (the child itself for other metric types)."""
        buffered: _BufferedSum | _BufferedHistogram
        if isinstance(metric, Counter):
            buffered = _BufferedCounter(child)
        elif isinstance(metric, Gauge):
            buffered = _BufferedGauge(child)
        elif isinstance(metric, Histogram):
            buffered = _BufferedHistogram(child, list(metric._upper_bounds))
        else:
            return child
        if self._loop is None:  # the loop that updates: the first one a child is made on
            with contextlib.suppress(RuntimeError):  # none running here (yet)
                self._loop = asyncio.get_running_loop()
                self._thread = threading.get_ident()
        with self._lock:
            self._children.append(buffered)
        return buffered

    def discard(self, removed: Iterable[Any]) -> None:
        """Stop flushing these children (their series are being removed): pending updates go with them."""
        gone = {id(child) for child in removed}
        if gone:
            with self._lock:  # one pass for many; a child wrapped meanwhile in another thread is kept
                self._children = [child for child in self._children if id(child) not in gone]

    def flush(self) -> None:
        """Add every buffered update to its metric; from another thread, on the updating loop."""
        loop = self._loop
        if self._thread in (None, threading.get_ident()) or loop is None or not loop.is_running():
            self._flush_here()
            return
        done = threading.Event()

        def flush_on_loop() -> None:
            try:
                self._flush_here()
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(flush_on_loop)
        except RuntimeError:  # the loop has stopped: nothing updates the numbers any more
            self._flush_here()
            return
        done.wait(_FLUSH_WAIT_S)  # a loop that stays busy longer: those updates come with the next scrape

    def _flush_here(self) -> None:
        for child in self._children:
            child.flush()

    def collect(self) -> Iterator[Metric]:
        self.flush()
        return iter(())
