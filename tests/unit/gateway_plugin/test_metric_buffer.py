"""`MetricBuffer`: buffered children expose exactly what prometheus_client's own children would."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway_plugin.telemetry.buffered import MetricBuffer
from gateway_plugin.telemetry.metrics import OVERHEAD_BUCKETS, GatewayMetrics

DURATIONS = st.floats(min_value=0.0, max_value=3.0, allow_nan=False) | st.sampled_from(OVERHEAD_BUCKETS)
OPS = st.lists(
    st.tuples(st.sampled_from(["counter", "gauge_up", "gauge_down", "histogram"]), st.sampled_from("ab"), DURATIONS),
    max_size=60,
)


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Gauge, Histogram]:
    return (
        Counter("c", "c", ["l"], registry=registry),
        Gauge("g", "g", ["l"], registry=registry),
        Histogram("h", "h", ["l"], buckets=OVERHEAD_BUCKETS, registry=registry),
    )


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _apply(ops: list[tuple[str, str, float]], counter: Any, gauge: Any, histogram: Any) -> None:
    for kind, label, value in ops:
        if kind == "counter":
            counter(label).inc(value)
        elif kind == "gauge_up":
            gauge(label).inc(value)
        elif kind == "gauge_down":
            gauge(label).dec(value)
        else:
            histogram(label).observe(value)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, scrape_every=st.integers(min_value=1, max_value=20))
def test_buffered_children_scrape_exactly_as_direct_ones(ops: list[tuple[str, str, float]], scrape_every: int) -> None:
    direct_registry, buffered_registry = CollectorRegistry(), CollectorRegistry()
    direct = _metrics(direct_registry)
    buffer = MetricBuffer()
    buffered_registry.register(buffer)
    real = _metrics(buffered_registry)
    cache: dict[tuple[int, str], Any] = {}

    def buffered(index: int) -> Any:
        def child(label: str) -> Any:
            key = (index, label)
            if key not in cache:
                cache[key] = buffer.wrap(real[index], real[index].labels(label))
            return cache[key]

        return child

    for start in range(0, max(len(ops), 1), scrape_every):  # scrapes in between must not lose or repeat
        chunk = ops[start : start + scrape_every]
        _apply(chunk, *(lambda label, m=m: m.labels(label) for m in direct))
        _apply(chunk, buffered(0), buffered(1), buffered(2))
        expected, got = _samples(direct_registry), _samples(buffered_registry)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


async def test_a_scrape_from_another_thread_flushes_on_the_loop_and_loses_nothing() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    buffer = metrics._buffer
    assert buffer is not None
    flushed_on: set[int] = set()
    flush_here = buffer._flush_here

    def spy() -> None:
        flushed_on.add(threading.get_ident())
        flush_here()

    buffer._flush_here = spy  # type: ignore[method-assign]
    await asyncio.to_thread(metrics.child, metrics.hedges, "m")  # a first child made where no loop runs
    counted = 0
    stop = False

    async def update() -> None:
        nonlocal counted
        while not stop:
            for _ in range(50):
                metrics.child(metrics.retries, "m").inc()
                counted += 1
            await asyncio.sleep(0)

    seen: list[float] = []

    def scrape() -> None:
        for _ in range(20):
            seen.append(registry.get_sample_value("distinfer_gateway_retries_total", {"model": "m"}) or 0.0)

    updater = asyncio.create_task(update())
    await asyncio.sleep(0)
    await asyncio.to_thread(scrape)  # the loop keeps updating meanwhile
    stop = True
    await updater
    assert seen == sorted(seen)  # every scrape saw the updates made before it
    assert seen[-1] > 0
    assert flushed_on == {threading.get_ident()}  # the updating loop's thread, never the scraper's
    assert registry.get_sample_value("distinfer_gateway_retries_total", {"model": "m"}) == counted


def test_multiprocess_mode_updates_the_real_children(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics = GatewayMetrics(CollectorRegistry())
    child = metrics.child(metrics.retries, "m")
    assert child is metrics.retries.labels("m")  # written to the process's file at once


def test_counters_refuse_negative_amounts_as_prometheus_does() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    with pytest.raises(ValueError, match="non-negative"):
        metrics.child(metrics.retries, "m").inc(-1)


async def test_a_restricted_scrape_sees_updates_once_the_loop_tick_flushes() -> None:
    """`name[]` scrapes collect only the named metrics, not the buffer; the event-loop tick flushes it."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics.child(metrics.retries, "m").inc()
    restricted = registry.restricted_registry(["distinfer_gateway_retries_total"])

    def seen() -> float | None:
        return next(
            (s.value for f in restricted.collect() for s in f.samples if s.name == "distinfer_gateway_retries_total"),
            None,
        )

    assert seen() == 0.0  # not flushed yet
    metrics.flush()
    assert seen() == 1.0
