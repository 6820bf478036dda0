"""The retry budget (a share of traffic plus a floor, over a sliding window) and hedged races."""

from __future__ import annotations

import asyncio

import pytest

from balancer.hedging import HedgePolicy, race
from balancer.retry import RetryBudget
from tests.fake_clock import FakeClock
from worker.errors import NodeRejected, NodeServerError


def test_budget_allows_the_floor_then_a_share_of_requests(clock: FakeClock) -> None:
    budget = RetryBudget(clock, ratio=0.2, min_per_s=1, window_s=10)
    assert sum(budget.withdraw() for _ in range(20)) == 10  # floor: 1/s over 10 s, no requests yet
    assert budget.refused == 10
    for _ in range(100):
        budget.deposit()
    assert sum(budget.withdraw() for _ in range(50)) == 20  # + 20 % of 100 requests
    clock.advance(11)  # everything leaves the window
    assert sum(budget.withdraw() for _ in range(50)) == 10


def test_budget_zero_means_no_retries(clock: FakeClock) -> None:
    budget = RetryBudget(clock, ratio=0, min_per_s=0)
    for _ in range(100):
        budget.deposit()
    assert not budget.withdraw()
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(clock, ratio=-1)


def test_hedge_policy_delays() -> None:
    assert HedgePolicy().delay_s(0.01) is None  # off
    assert HedgePolicy(enabled=True).delay_s(None) is None  # no p95 yet
    assert HedgePolicy(enabled=True).delay_s(0.010) == 0.010
    assert HedgePolicy(enabled=True, after_s=0.05).delay_s(0.010) == 0.05
    assert HedgePolicy(enabled=True, min_after_s=0.02).delay_s(0.001) == 0.02


async def _answer(value: str, after: float, log: list[str]) -> str:
    try:
        await asyncio.sleep(after)
    except asyncio.CancelledError:
        log.append(f"cancelled {value}")
        raise
    return value


async def _fail(error: Exception, after: float) -> str:
    await asyncio.sleep(after)
    raise error


async def test_fast_primary_wins_without_a_hedge() -> None:
    log: list[str] = []
    started: list[int] = []

    def hedge() -> object:
        started.append(1)
        return _answer("hedge", 0, log)

    assert await race(_answer("primary", 0.001, log), hedge, 0.5) == ("primary", False)  # type: ignore[arg-type]
    assert started == []


async def test_slow_primary_loses_to_the_hedge_and_is_cancelled() -> None:
    log: list[str] = []
    result = await race(_answer("primary", 5, log), lambda: _answer("hedge", 0.01, log), 0.02)
    assert result == ("hedge", True)
    assert log == ["cancelled primary"]


async def test_a_failure_waits_for_the_other_and_both_failing_raises() -> None:
    log: list[str] = []
    boom = NodeServerError("boom", node_url="http://a", status=500)
    assert await race(_fail(boom, 0.05), lambda: _answer("hedge", 0.1, log), 0.01) == ("hedge", True)
    assert await race(_answer("primary", 0.1, log), lambda: _fail(boom, 0.0), 0.01) == ("primary", False)
    rejected = NodeRejected("bad", node_url="http://b", status=400)
    with pytest.raises(NodeRejected):
        await race(_fail(rejected, 0.03), lambda: _fail(boom, 0.05), 0.01)


async def test_no_hedge_available_waits_for_the_primary() -> None:
    log: list[str] = []
    assert await race(_answer("primary", 0.05, log), lambda: None, 0.01) == ("primary", False)


async def test_cancelling_the_race_cancels_both() -> None:
    log: list[str] = []
    task = asyncio.ensure_future(race(_answer("primary", 5, log), lambda: _answer("hedge", 5, log), 0.01))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(log) == ["cancelled hedge", "cancelled primary"]
