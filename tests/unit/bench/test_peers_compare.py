"""distinfer-vs-peer ratios and the issue's two peer targets, on hand-made medians and runs."""

from __future__ import annotations

from typing import Any

from bench.loadgen import LoadResult
from bench.peers.compare import Pair, compare, judge_ahead, judge_as_fast
from bench.peers.document import Judged, Recorder
from bench.peers.measure import Case, PeerParams, PeerRun, run_notes
from bench.scenarios.overhead import Body
from bench.scenarios.peer import judged_pairs
from bench.summary import Run


def _figures(rps: float, p50: float, p99: float) -> dict[str, Any]:
    return {"throughput": rps, "p50_ms": p50, "p99_ms": p99}


def _table(ours: dict[str, dict[str, Any]], peer: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"json": {level: {"ours": ours[level], "peer": peer[level]} for level in ours}}


def test_ratios_are_ours_over_the_peer_at_each_concurrency() -> None:
    table = _table(
        {"1": _figures(1000, 1.0, 2.0), "64": _figures(1500, 40.0, 80.0)},
        {"1": _figures(500, 2.0, 4.0), "64": _figures(500, 120.0, 160.0)},
    )

    comparison = compare(table, Pair("ours", "peer"))

    assert list(comparison["by_concurrency"]) == ["1", "64"]
    assert comparison["by_concurrency"]["1"]["throughput"] == {"ours": 1000.0, "peer": 500.0, "ratio": 2.0}
    assert comparison["by_concurrency"]["64"]["p99_ms"]["ratio"] == 0.5
    assert comparison["label"] == "ours (json) vs peer (json)"


def test_binary_against_json_compares_across_encodings() -> None:
    table = {
        "json": {"1": {"peer": _figures(100, 5.0, 9.0)}},
        "binary": {"1": {"ours": _figures(300, 2.0, 3.0)}},
    }

    comparison = compare(table, Pair("ours", "peer", ours_encoding="binary"))

    assert comparison["by_concurrency"]["1"]["throughput"]["ratio"] == 3.0


def test_as_fast_needs_throughput_and_p50_at_every_level_and_says_by_how_much() -> None:
    table = _table(
        {"1": _figures(1000, 1.0, 9.0), "64": _figures(900, 70.0, 90.0)},
        {"1": _figures(1000, 1.0, 2.0), "64": _figures(1000, 64.0, 80.0)},
    )

    verdict = judge_as_fast(compare(table, Pair("ours", "peer")))

    assert not verdict["met"]
    assert verdict["by_concurrency"]["1"]["throughput"]["met"]  # a tie is as fast
    assert verdict["by_concurrency"]["1"]["p50_ms"]["met"]
    assert not verdict["by_concurrency"]["64"]["throughput"]["met"]
    assert verdict["misses"] == [
        "c=64: throughput 0.90x peer's (10% lower)",
        "c=64: p50 1.09x peer's (9% higher)",
    ]


def test_ahead_is_strict_and_judges_p99_not_p50() -> None:
    table = _table(
        {"1": _figures(200, 9.0, 4.0), "64": _figures(300, 200.0, 300.0)},
        {"1": _figures(100, 1.0, 8.0), "64": _figures(300, 300.0, 300.0)},
    )

    verdict = judge_ahead(compare(table, Pair("ours", "peer")))

    assert verdict["by_concurrency"]["1"] == {
        "throughput": {"ratio": 2.0, "met": True},
        "p99_ms": {"ratio": 0.5, "met": True},
    }
    assert not verdict["met"]
    assert verdict["misses"] == ["c=64: throughput tied with peer's", "c=64: p99 tied with peer's"]


def test_a_missing_side_is_not_met() -> None:
    table = {"json": {"1": {"ours": _figures(100, 1.0, 2.0), "peer": {"throughput": None}}}}

    verdict = judge_as_fast(compare(table, Pair("ours", "peer")))

    assert not verdict["met"]
    assert "c=1: throughput not measured for both" in verdict["misses"]
    assert not judge_ahead(compare({}, Pair("ours", "peer")))["met"]  # nothing measured at all


def _run(
    target: str, encoding: str, concurrency: int, rps: float, p50: float, p99: float, foreign: float = 0.0
) -> PeerRun:
    result = LoadResult(
        requests=int(rps),
        ok=int(rps),
        errors=0,
        timeouts=0,
        elapsed_s=1.0,
        throughput=rps,
        p50_ms=p50,
        p90_ms=p50,
        p99_ms=p99,
        mean_ms=p50,
        client_cpu_s=0.1,
    )
    return PeerRun(Run(target, encoding, concurrency, 1, result), 0.5, 0.01, foreign_cpu_share=foreign)


def test_document_judges_the_matched_pair_and_reports_binary_for_information() -> None:
    runs = [
        _run("distinfer", "json", 1, 900, 1.0, 2.0),
        _run("distinfer", "binary", 1, 1000, 0.9, 1.5),
        _run("mlserver", "json", 1, 600, 1.5, 3.0),
        _run("distinfer-batching", "json", 1, 300, 3.0, 5.0),
        _run("mlserver-batching", "json", 1, 400, 2.5, 4.0),
    ]
    body = Body("json", b"{}", {})
    cases = [Case("distinfer", body, "http://127.0.0.1:1/v2/models/digits/infer")]

    document = Recorder("peer", PeerParams.make(quick=True)).document(cases, runs, judged_pairs(), {"model": "digits"})

    matched, inproc, batching, binary = document["comparisons"]
    assert matched["verdict"]["met"]
    assert matched["by_concurrency"]["1"]["server_cpu_ms_per_request"]["ratio"] == 0.6667  # same cpu, 1.5x the rps
    assert inproc["verdict"]["misses"][0] == "c=1: throughput not measured for both"  # a failed peer is no pass
    assert not batching["verdict"]["met"]
    assert batching["verdict"]["misses"][0] == "c=1: throughput 0.75x mlserver-batching's (25% lower)"
    assert binary["verdict"] is None
    assert binary["by_concurrency"]["1"]["throughput"]["ratio"] == 1.6667
    assert document["targets_met"] is False
    figures = document["results"]["json"]["1"]["distinfer"]
    assert figures["server_cpu_ms_per_request"] == round(0.5 * 1000 / 900, 4)
    assert "p50_over_direct_ms" not in figures
    assert document["targets_measured"] == {"distinfer/json": "http://127.0.0.1:1/v2/models/digits/infer"}


def test_a_comparison_with_nothing_measured_is_left_out() -> None:
    document = Recorder("peer", PeerParams.make(quick=True)).document(
        [], [], (Judged(Pair("distinfer", "mlserver"), "as_fast"),), {}
    )

    assert document["comparisons"] == []
    assert document["targets_met"] is False


def test_a_busy_machine_is_called_out() -> None:
    quiet = [_run("distinfer", "json", 1, 900, 1.0, 2.0, foreign=0.05) for _ in range(3)]
    busy = [_run("distinfer", "json", 1, 900, 1.0, 2.0, foreign=1.5) for _ in range(3)]

    assert run_notes(quiet) == []
    (note,) = run_notes(busy)
    assert "used 1.50 cores" in note
