"""Medians over rounds, overheads over direct, and the two targets of the performance issue."""

from __future__ import annotations

import math

import pytest

from bench.loadgen import LoadResult
from bench.summary import Run, aggregate, judge, ratios


def result(p50: float, throughput: float, *, p99: float | None = None) -> LoadResult:
    return LoadResult(
        requests=100,
        ok=100,
        errors=0,
        timeouts=0,
        elapsed_s=1.0,
        throughput=throughput,
        p50_ms=p50,
        p90_ms=p50,
        p99_ms=p99 if p99 is not None else p50 * 2,
        mean_ms=p50,
        client_cpu_s=0.25,
    )


def runs(figures: dict[str, tuple[float, float]], gateway_rounds: list[tuple[float, float]]) -> list[Run]:
    """Three rounds at c=1 and c=64 for each target; the gateway's rounds vary."""
    out: list[Run] = []
    for round_ in range(3):
        for target, (p50, rps) in figures.items():
            out.append(Run(target, "json", 1, round_, result(p50, rps)))
            out.append(Run(target, "json", 64, round_, result(p50 * 30, rps * 1.5)))
        p50, rps = gateway_rounds[round_]
        out.append(Run("gateway", "json", 1, round_, result(p50, rps)))
        out.append(Run("gateway", "json", 64, round_, result(p50 * 30, rps * 1.5)))
    return out


def test_figures_are_medians_and_overheads_subtract_direct() -> None:
    measured = aggregate(
        runs({"direct": (1.0, 1000.0), "passthrough": (1.2, 900.0)}, [(1.3, 850.0), (9.0, 100.0), (1.25, 860.0)])
    )

    gateway = measured["json"]["1"]["gateway"]
    assert gateway["p50_ms"] == pytest.approx(1.3)  # the 9 ms round is an outlier, not the figure
    assert gateway["throughput"] == pytest.approx(850.0)
    assert gateway["p50_over_direct_ms"] == pytest.approx(0.3)
    assert (gateway["requests"], gateway["rounds"]) == (300, 3)


def full_runs(cpu_ms: list[float]) -> list[Run]:
    """Target `full` (auth + tracing) at c=64, one round per CPU figure."""
    return [Run("full", "json", 64, round_, result(40.0, 800.0), ms) for round_, ms in enumerate(cpu_ms)]


def test_ratios_and_targets() -> None:
    measured = aggregate(
        runs({"direct": (1.0, 1000.0), "passthrough": (1.2, 900.0)}, [(1.3, 850.0), (1.3, 850.0), (1.3, 850.0)])
        + full_runs([0.6, 2.0, 0.7])
    )
    by_encoding = ratios(measured, latency_at=1, throughput_at=64)
    figures = by_encoding["json"]

    assert figures["overhead_p50_ms"] == {"passthrough": pytest.approx(0.2), "gateway": pytest.approx(0.3)}
    assert figures["gateway_overhead_over_passthrough"] == pytest.approx(1.5)
    assert figures["gateway_throughput_over_passthrough"] == pytest.approx(850 / 900, abs=1e-4)
    assert figures["throughput_over_direct"]["gateway"] == pytest.approx(0.85)
    assert figures["gateway_overhead_over_nginx"] is None  # nginx not measured
    verdict = judge(by_encoding)
    assert verdict["json"]["overhead"]["met"] is True  # 1.5 is within 1.5x
    assert verdict["json"]["throughput"]["met"] is True
    assert figures["full_cpu_ms_per_request"] == pytest.approx(0.7)  # the median; 2.0 was one bad round
    assert verdict["json"]["cpu_all_features"] == {"ms_per_request": pytest.approx(0.7), "met": True}
    assert verdict["all_met"] is True


@pytest.mark.parametrize(("cpu_ms", "met"), [([1.2, 1.1, 1.3], False), ([], False), ([1.0], True)])
def test_cpu_target_needs_the_full_gateway_within_one_ms(cpu_ms: list[float], met: bool) -> None:
    measured = aggregate(
        runs({"direct": (1.0, 1000.0), "passthrough": (1.2, 900.0)}, [(1.3, 850.0)] * 3) + full_runs(cpu_ms)
    )
    verdict = judge(ratios(measured, latency_at=1, throughput_at=64))
    assert verdict["json"]["cpu_all_features"]["met"] is met
    assert verdict["all_met"] is met  # the other two targets are met here


def test_missing_gateway_fails_the_targets() -> None:
    measured = aggregate(
        [
            Run(t, "binary", c, 0, result(1.0 + (t == "passthrough"), 100.0))
            for t in ("direct", "passthrough")
            for c in (1, 64)
        ]
    )
    verdict = judge(ratios(measured, latency_at=1, throughput_at=64))

    assert verdict["binary"]["overhead"] == {"ratio": None, "met": False}
    assert verdict["all_met"] is False


def test_no_successful_request_gives_no_figure() -> None:
    empty = LoadResult(5, 0, 5, 0, 1.0, 0.0, math.nan, math.nan, math.nan, math.nan, 0.0)
    measured = aggregate([Run("direct", "json", 1, 0, empty)])

    assert measured["json"]["1"]["direct"]["p50_ms"] is None
    assert measured["json"]["1"]["direct"]["errors"] == 5
