"""The load generator against a tiny in-process server: counts, error accounting, percentiles, bounds."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from bench.loadgen import LoadSpec, run_load

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/infer", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/infer"
    finally:
        await runner.cleanup()


async def echo(request: web.Request) -> web.Response:
    return web.Response(body=await request.read())


async def test_counted_run_sends_exactly_that_many_requests() -> None:
    async with serve(echo) as url:
        result = await run_load(LoadSpec(url=url, body=b"hello", concurrency=4, requests=50))

    assert (result.requests, result.ok, result.errors, result.timeouts) == (50, 50, 0, 0)
    assert 0 < result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.mean_ms > 0
    assert result.throughput > 0
    assert result.client_cpu_s >= 0


async def test_non_200_answers_are_errors_and_left_out_of_latencies() -> None:
    answers = itertools.cycle([200, 500])

    async def every_other_fails(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=next(answers), text="x")

    async with serve(every_other_fails) as url:
        result = await run_load(LoadSpec(url=url, body=b"x", concurrency=4, requests=50))

    assert (result.requests, result.ok, result.errors, result.timeouts) == (50, 25, 25, 0)


async def test_timed_run_stops_by_itself_after_warm_up() -> None:
    async with serve(echo) as url:
        result = await run_load(LoadSpec(url=url, body=b"x", concurrency=2, duration_s=0.2, warmup_s=0.05))

    assert result.requests > 0
    assert result.errors == 0
    assert 0.2 <= result.elapsed_s < 1.0


async def test_unreachable_server_counts_errors_and_has_no_percentiles() -> None:
    async with serve(echo) as url:
        pass  # closed again: nothing listens on that port now
    result = await run_load(LoadSpec(url=url, concurrency=2, requests=6))

    assert (result.requests, result.ok, result.errors) == (6, 0, 6)
    assert result.as_dict()["p50_ms"] is None


async def test_slow_answers_count_as_timeouts_not_errors() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.Response()

    async with serve(slow) as url:
        result = await run_load(LoadSpec(url=url, concurrency=2, requests=2, timeout_s=0.05))

    assert (result.timeouts, result.errors, result.ok) == (2, 0, 0)


@pytest.mark.parametrize(
    "bounds",
    [{}, {"requests": 1, "duration_s": 1.0}, {"requests": 1, "concurrency": 0}, {"duration_s": 1000.0}],
)
def test_spec_must_be_bounded_and_unambiguous(bounds: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|exactly one"):
        LoadSpec(url="http://127.0.0.1:1/", **bounds)
