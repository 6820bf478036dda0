"""Shadow bookkeeping: bounded owned tasks, and the counters dashboards read."""

from __future__ import annotations

import asyncio

from gateway_plugin.shadow import BackgroundWork, ShadowStats


async def test_background_work_is_bounded_and_cancelled_on_close() -> None:
    work = BackgroundWork(limit=2)
    release = asyncio.Event()
    started: list[int] = []

    async def job(i: int) -> None:
        started.append(i)
        await release.wait()

    assert not work.spawn(job(0), "before-open")  # not started yet: refused, coroutine closed
    work.open()
    assert work.spawn(job(1), "a")
    assert work.spawn(job(2), "b")
    assert not work.spawn(job(3), "c")  # full: skipped, never queued
    await asyncio.sleep(0)
    assert sorted(started) == [1, 2]
    assert work.running == 2
    await work.close()
    assert work.running == 0
    assert not work.spawn(job(4), "after-close")


async def test_finished_tasks_free_their_slot() -> None:
    work = BackgroundWork(limit=1)
    work.open()

    async def quick() -> None:
        return None

    assert work.spawn(quick(), "one")
    for _ in range(50):
        if work.running == 0:
            break
        await asyncio.sleep(0.01)
    assert work.spawn(quick(), "two")
    await work.close()


def test_stats_snapshot() -> None:
    stats = ShadowStats(keep_divergences=2)
    stats.record(request_id="r1", model="m", local_ms=2.0, cluster_ms=4.0, divergence=None)
    stats.record(request_id="r2", model="m", local_ms=3.0, cluster_ms=5.0, divergence="logits: values differ")
    stats.record_error(request_id="r3", model="m", detail="no_capacity")
    stats.record_error(request_id="r4", model="m", detail="no_capacity")
    stats.record_skipped()
    snap = stats.snapshot()
    assert (snap["compared"], snap["matched"], snap["diverged"], snap["cluster_errors"], snap["skipped"]) == (
        2,
        1,
        1,
        2,
        1,
    )
    assert snap["match_rate"] == 0.5
    assert snap["latency_ms"]["cluster"]["p50"] == 4.5
    assert [d["request_id"] for d in snap["recent_divergences"]] == ["r3", "r4"]  # bounded to the last two
