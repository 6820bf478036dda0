"""`bench balance` pieces that need no processes: parameters, per-node summaries, the goals' verdicts."""

from __future__ import annotations

import pytest

from bench.nodeload import NodeLoadResult, Sample
from bench.scenarios.balance import BalanceParams, judge_balance


def test_params_quick_and_bounds() -> None:
    assert BalanceParams.make(quick=True).rounds == 1
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
