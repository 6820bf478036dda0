"""The chaos figures and report, from hand-made samples (no processes)."""

from __future__ import annotations

import pytest

from bench.chaos.report import markdown, rows
from bench.chaos.run import ALL_SCENARIOS, ChaosPlan
from bench.chaos.scenarios import ChaosParams, ScenarioResult
from bench.chaos.traffic import NodeWatch, Sample, figures

OK = b'{"outputs": [{"name": "logits", "shape": [1, 2], "datatype": "FP32", "data": [0.1, 0.9]}]}'


def test_figures_tell_failed_lost_refused_and_wrong_apart() -> None:
    samples = [
        Sample(0.0, 0.010, 200, "node-a"),
        Sample(1.0, 1.020, 200, "node-b"),
        Sample(1.1, 1.300, 503),
        Sample(1.2, 9.000, None, error="TimeoutError"),
        Sample(1.3, 1.301, None, refused=True, error="ClientConnectorError"),
        Sample(1.4, 1.410, 200, "node-b", wrong=True),
        Sample(5.0, 5.005, 200, "node-a"),
    ]
    out = figures(samples, window=(1.0, 2.0))
    assert out["sent"] == 6  # the refused one never left the client
    assert (out["ok"], out["failed"], out["lost"], out["refused"], out["wrong_answers"]) == (3, 2, 1, 1, 1)
    assert out["statuses"] == {"503": 1}  # answers other than 200, by status
    assert out["p99_fault_ms"] == pytest.approx(20.0, abs=0.01)  # only the one usable answer in the window
    assert out["served_by"] == {"node-a": 2, "node-b": 1}


def test_node_watch_finds_the_first_change_after_a_time() -> None:
    watch = NodeWatch("http://unused")
    watch.seen = [(0.0, "node-b", True), (1.0, "node-b", True), (1.5, "node-b", False), (3.0, "node-b", True)]
    assert watch.first("node-b", in_rotation=False, after=1.0) == 1.5
    assert watch.first("node-b", in_rotation=True, after=2.0) == 3.0
    assert watch.first("node-a", in_rotation=False, after=0.0) is None
    assert NodeWatch.in_rotation({"status": "online", "breaker": "closed"})
    assert not NodeWatch.in_rotation({"status": "online", "breaker": "open"})
    assert not NodeWatch.in_rotation({"status": "online", "quarantined": True})
    assert not NodeWatch.in_rotation({"status": "offline"})


def test_a_result_meets_its_targets_only_when_done_and_all_met() -> None:
    good = ScenarioResult("x", "f", targets={"failed": {"value": 0, "max": 0, "met": True}})
    bad = ScenarioResult("x", "f", targets={"failed": {"value": 3, "max": 0, "met": False}})
    skipped = ScenarioResult("x", "f", status="skipped")
    assert good.met
    assert not bad.met
    assert not skipped.met


def test_report_rows_and_markdown() -> None:
    document = {
        "started_at": "now",
        "wall_s": 1.0,
        "all_met": False,
        "faults": [
            ScenarioResult(
                "node_killed",
                "kill",
                figures={"sent": 10, "failed": 0, "lost": 0, "p99_ms": 12.3456, "time_to_eject_s": 0.05},
                targets={"failed": {"value": 0, "max": 0, "met": True}},
            ).as_dict(),
            {"name": "broken", "status": "error", "met": False, "error": "boom"},
        ],
        "schemathesis": {"cases": 100, "server_errors": 1},
    }
    table = rows(document)
    assert table[0][:4] == ("node_killed", "10", "0", "0")
    assert table[0][-1] == "yes"
    assert table[1][-1] == "NO"
    assert table[2][0].startswith("schemathesis")
    assert table[2][-1] == "NO"
    text = markdown(document)
    assert text.splitlines()[0].startswith("| scenario |")
    assert len(text.splitlines()) == 2 + len(table)


def test_plans_know_their_scenarios() -> None:
    assert {"node_killed", "http_faults", "tcp_faults", "gateway_restart", "redis_restart"} <= set(ALL_SCENARIOS)
    assert ChaosPlan(ChaosParams.short()).scenarios == list(ALL_SCENARIOS)
    with pytest.raises(ValueError, match="unknown scenarios"):
        ChaosPlan(ChaosParams.short(), scenarios=["meteor_strike"])
    assert ChaosParams.short().quick
    assert not ChaosParams.long().quick
    assert ChaosParams.long().fault_s > ChaosParams.short().fault_s
