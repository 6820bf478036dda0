"""The dynamic batcher: every caller gets exactly its own rows back, whatever the mix."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.batching import BatchPolicy, DynamicBatcher
from worker.errors import ModelNotReady
from worker.runtimes.base import Arrays

POISON = -1.0


class CountingRuntime:
    """A tiny real runtime: y = 2x + 1 and the row sums; a row starting with -1 makes it raise."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def run(self, feeds: Arrays) -> dict[str, np.ndarray[Any, Any]]:
        x = feeds["x"]
        self.calls.append(x.shape[0])
        if np.any(x[:, 0] == POISON):
            raise ValueError("poisoned row")
        return {"y": x * 2 + 1, "rowsum": x.sum(axis=1)}


def _request(caller: int, rows: int, width: int, poison: bool) -> dict[str, np.ndarray[Any, Any]]:
    # Every value says which caller and row it came from, so a mix-up cannot go unseen.
    x = np.array([[caller * 1000 + r * 10 + c for c in range(width)] for r in range(rows)], dtype=np.float32)
    if poison:
        x[0, 0] = POISON
    return {"x": x}


async def _run_mix(
    policy: BatchPolicy, mix: list[tuple[int, int, bool, float]], runtime: CountingRuntime
) -> tuple[list[object], DynamicBatcher]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        batcher = DynamicBatcher(runtime.run, executor, policy)
        loop_task = asyncio.create_task(batcher.run())

        async def call(caller: int, rows: int, width: int, poison: bool, delay: float) -> object:
            await asyncio.sleep(delay)
            try:
                return await batcher.submit(_request(caller, rows, width, poison))
            except ValueError as exc:
                return exc

        results = await asyncio.gather(
            *(call(i, rows, width, poison, delay) for i, (rows, width, poison, delay) in enumerate(mix))
        )
        loop_task.cancel()
        await asyncio.gather(loop_task, return_exceptions=True)
    return list(results), batcher


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_batch=st.integers(min_value=1, max_value=12),
    delay_ms=st.sampled_from([0.0, 1.0, 3.0]),
    concurrent=st.integers(min_value=1, max_value=2),
    mix=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=4),  # rows
            st.sampled_from([2, 3]),  # width: different widths must never be stacked together
            st.booleans(),  # poisoned
            st.sampled_from([0.0, 0.0005, 0.002]),  # arrival delay
        ),
        min_size=1,
        max_size=24,
    ),
)
def test_every_caller_gets_exactly_its_own_rows(
    max_batch: int, delay_ms: float, concurrent: int, mix: list[tuple[int, int, bool, float]]
) -> None:
    mix = [(min(rows, max_batch), width, poison, delay) for rows, width, poison, delay in mix]
    policy = BatchPolicy(max_batch_size=max_batch, max_queue_delay_s=delay_ms / 1000, max_concurrent_batches=concurrent)
    runtime = CountingRuntime()
    results, batcher = asyncio.run(_run_mix(policy, mix, runtime))
    for caller, ((rows, width, poison, _), result) in enumerate(zip(mix, results, strict=True)):
        if poison:
            assert isinstance(result, ValueError), f"caller {caller} should have failed alone"
            continue
        assert isinstance(result, dict), f"caller {caller} failed: {result!r}"
        x = _request(caller, rows, width, poison=False)["x"]
        np.testing.assert_array_equal(result["y"], x * 2 + 1)
        np.testing.assert_array_equal(result["rowsum"], x.sum(axis=1))
    assert all(size <= max_batch for size in batcher.batch_sizes)
    assert all(rows <= max_batch for rows in runtime.calls)


def test_concurrent_requests_are_stacked_into_fewer_calls() -> None:
    runtime = CountingRuntime()
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.05, max_concurrent_batches=1)
    mix = [(1, 2, False, 0.0)] * 8
    results, batcher = asyncio.run(_run_mix(policy, mix, runtime))
    assert all(isinstance(r, dict) for r in results)
    # Eight one-row requests arriving together within the delay form one call of eight rows.
    assert runtime.calls == [8]
    assert list(batcher.batch_sizes) == [8]


def test_preferred_size_sends_without_waiting_for_the_delay() -> None:
    runtime = CountingRuntime()
    policy = BatchPolicy(max_batch_size=64, max_queue_delay_s=5.0, preferred_batch_sizes=(4,))

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await _run_mix(policy, [(1, 2, False, 0.0)] * 4, runtime)
        return loop.time() - start

    assert asyncio.run(scenario()) < 2.0  # far below the 5 s delay
    assert runtime.calls == [4]


def test_a_cancelled_caller_is_skipped_and_the_others_are_served() -> None:
    runtime = CountingRuntime()
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=0.05)

    async def scenario() -> list[object]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = DynamicBatcher(runtime.run, executor, policy)
            loop_task = asyncio.create_task(batcher.run())
            doomed = asyncio.create_task(batcher.submit(_request(0, 2, 2, False)))
            others = [asyncio.create_task(batcher.submit(_request(i, 1, 2, False))) for i in (1, 2)]
            await asyncio.sleep(0)
            doomed.cancel()
            results = await asyncio.gather(*others)
            loop_task.cancel()
            await asyncio.gather(loop_task, return_exceptions=True)
            return list(results)

    results = asyncio.run(scenario())
    assert [float(r["y"][0, 0]) for r in results] == [2001.0, 4001.0]  # type: ignore[index]
    assert runtime.calls == [2]  # the cancelled caller's two rows were never run


@pytest.mark.parametrize("rows", [9, 100])
def test_more_rows_than_the_batch_limit_are_refused(rows: int) -> None:
    async def scenario() -> None:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = DynamicBatcher(CountingRuntime().run, executor, BatchPolicy(max_batch_size=8))
            await batcher.submit(_request(0, rows, 2, False))

    with pytest.raises(ValueError, match="max_batch_size"):
        asyncio.run(scenario())


def test_a_failure_outside_the_runtime_still_answers_every_caller() -> None:
    """Regression: an error while stacking (not in the runtime) left callers waiting forever."""

    def split_breaker(feeds: Arrays) -> dict[str, np.ndarray[Any, Any]]:
        return [feeds["x"]]  # type: ignore[return-value]  # a broken runtime adapter: not a dict

    async def scenario() -> list[object]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = DynamicBatcher(split_breaker, executor, BatchPolicy(max_batch_size=8, max_queue_delay_s=0.05))
            loop_task = asyncio.create_task(batcher.run())
            calls = [batcher.submit(_request(i, 2, 2, False)) for i in range(3)]
            async with asyncio.timeout(5):
                results = await asyncio.gather(*calls, return_exceptions=True)
            loop_task.cancel()
            await asyncio.gather(loop_task, return_exceptions=True)
            return list(results)

    results = asyncio.run(scenario())
    assert all(isinstance(r, AttributeError) for r in results)


async def test_a_stop_while_a_batch_waits_for_company_stops_the_batcher() -> None:
    """Regression: `asyncio.wait_for` on 3.11 drops a cancel that lands just as its wait ends (a
    request arriving right before shutdown), and the batcher's task then never stopped."""
    policy = BatchPolicy(max_batch_size=8, max_queue_delay_s=5.0)
    with ThreadPoolExecutor(max_workers=1) as executor:
        for _ in range(10):
            batcher = DynamicBatcher(CountingRuntime().run, executor, policy)
            task = asyncio.create_task(batcher.run())
            first = asyncio.create_task(batcher.submit(_request(1, 1, 2, poison=False)))
            await asyncio.sleep(0.01)  # the first request waits for company
            second = asyncio.create_task(batcher.submit(_request(2, 1, 2, poison=False)))
            await asyncio.sleep(0)  # it arrives: the wait ends, its waiter is not resumed yet
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=3)
            assert task.cancelled()
            # The caller whose request was taken out of the queue for this batch is not left waiting.
            ended = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), timeout=3)
            assert all(isinstance(result, ModelNotReady) for result in ended)  # a 503: retried elsewhere


async def test_a_stop_while_a_batch_runs_ends_its_callers() -> None:
    """The batch already in the runtime when the batcher stops: its callers get a 503, not silence."""
    release = threading.Event()

    def slow(feeds: dict[str, np.ndarray[Any, Any]]) -> dict[str, np.ndarray[Any, Any]]:
        release.wait(5)
        return {"y": feeds["x"] * 2}

    with ThreadPoolExecutor(max_workers=1) as executor:
        batcher = DynamicBatcher(slow, executor, BatchPolicy(max_batch_size=8, max_queue_delay_s=0.001))
        task = asyncio.create_task(batcher.run())
        callers = [asyncio.create_task(batcher.submit(_request(n, 1, 2, poison=False))) for n in range(2)]
        await asyncio.sleep(0.05)  # both are in the runtime call now
        task.cancel()
        ended = await asyncio.wait_for(asyncio.gather(*callers, return_exceptions=True), timeout=3)
        release.set()
    assert all(isinstance(result, ModelNotReady) for result in ended)
