"""`bench balance` pieces that need no processes: parameters, per-node summaries, the goals' verdicts."""

from __future__ import annotations

import pytest

from bench.nodeload import NodeLoadResult, Sample
from bench.scenarios.balance import BASELINE, STRATEGIES, BalanceParams, Cell, combine, judge_balance, schedule


def test_params_quick_and_bounds() -> None:
    assert BalanceParams.make(quick=True).rounds == 1
    assert BalanceParams.make().rounds >= 3  # a median over 2 is their mean: one bad round moves it half-way
    assert 0 < BalanceParams.make(quick=True).warmup_s <= BalanceParams.make().warmup_s
    assert BalanceParams.make(nodes=3, concurrency=5).nodes == 3
    with pytest.raises(ValueError, match="nodes"):
        BalanceParams.make(nodes=1)


def test_summary_counts_failures_and_the_slow_share() -> None:
    samples = [Sample(0.0, 0.010, 200, "a")] * 6 + [Sample(0.0, 0.100, 200, "slow")] * 2 + [Sample(0, 1, 0, None)]
    figures = NodeLoadResult(samples, elapsed_s=2.0).summary("slow")
    assert (figures["requests"], figures["ok"], figures["failed"]) == (9, 8, 1)
    assert figures["slow_share"] == 0.25
    assert figures["throughput"] == 4.0
    assert figures["by_node"] == {"a": 6, "slow": 2}
    assert NodeLoadResult([], 1.0).summary("slow")["p99_ms"] is None


def _document(latency_p99: float, rr_p99: float, failed: int, ejection: float | None) -> dict[str, object]:
    return {
        "healthy": {"latency": {"p99_ms": 10.0}},
        "slow": {"latency": {"p99_ms": latency_p99}, "round_robin": {"p99_ms": rr_p99}},
        "failover": {"failed": failed, "kill_to_ejection_ms": ejection},
    }


def test_goals() -> None:
    met = judge_balance(_document(14.0, 90.0, 0, 120.0))
    assert met["all_met"]
    assert met["latency_p99_over_healthy"]["ratio"] == 1.4
    missed = judge_balance(_document(16.0, 20.0, 2, None))
    assert not any(goal["met"] for goal in missed.values() if isinstance(goal, dict))
    assert not missed["all_met"]


def test_schedule_interleaves_the_healthy_baseline_with_every_strategy() -> None:
    rounds = [schedule(round_) for round_ in range(3)]
    expected = {Cell("healthy", name) for name in BASELINE} | {Cell("slow", name) for name in STRATEGIES}
    for cells in rounds:
        assert len(cells) == len(expected)  # every cell once a round
        assert set(cells) == expected
    assert len({cells[0] for cells in rounds}) == 3  # rotated: a different cell opens each round
    baseline = Cell("healthy", "latency")
    positions = [cells.index(baseline) for cells in rounds]
    assert len(set(positions)) == 3  # not always measured first (or at any one place) in its round


def _run(p99: float, share: float | None = None, requests: int = 100, failed: int = 0) -> dict[str, object]:
    return {
        "p50_ms": p99 / 10,
        "p90_ms": p99 / 2,
        "p99_ms": p99,
        "throughput": 500.0,
        "slow_share": share,
        "requests": requests,
        "ok": requests - failed,
        "failed": failed,
    }


def test_combine_takes_medians_over_rounds_and_sums_counts() -> None:
    figures = combine([_run(20.0, 0.001), _run(90.0, 0.004, failed=1), _run(22.0, 0.002)])
    assert figures["p99_ms"] == 22.0  # the unlucky round does not decide the figure
    assert figures["slow_share"] == 0.002
    assert (figures["requests"], figures["ok"], figures["failed"], figures["rounds"]) == (300, 299, 1, 3)
    assert combine([_run(20.0), _run(30.0)])["slow_share"] is None  # the healthy cluster has no slow node


def test_goals_list_each_round_s_own_ratio() -> None:
    document = _document(14.0, 90.0, 0, 120.0)
    document["runs"] = {
        "healthy": {"latency": [_run(10.0), _run(20.0)]},
        "slow": {"latency": [_run(12.0), _run(40.0)], "round_robin": [_run(50.0), _run(60.0)]},
    }
    goals = judge_balance(document)
    assert goals["latency_p99_over_healthy"]["by_round"] == [1.2, 2.0]
    assert goals["round_robin_p99_over_healthy"]["by_round"] == [5.0, 3.0]
    assert goals["latency_p99_over_healthy"]["met"]  # judged on the medians, not on one round
