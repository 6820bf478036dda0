"""The `/stats` window (bounded, percentiles, throughput on a fake clock) and the log formatters."""

from __future__ import annotations

import io
import json
import logging

from gateway_plugin.telemetry.logs import JsonFormatter, TextFormatter, configure_logging
from gateway_plugin.telemetry.stats import StatsWindow, percentile
from tests.fake_clock import FakeClock


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0


def test_node_window_keeps_only_recent_attempts_and_counts_errors() -> None:
    stats = StatsWindow(per_node=4)
    for seconds, ok in [(9.0, False)] * 10 + [(0.001, True), (0.002, True), (0.003, True), (0.004, False)]:
        stats.attempt("n1", seconds, ok)
    window = stats.node("n1")
    assert (window.samples, window.p50_ms, window.p99_ms, window.error_rate) == (4, 2.0, 4.0, 0.25)
    assert stats.node("never-seen").samples == 0


def test_nodes_are_bounded_and_forgotten() -> None:
    stats = StatsWindow(max_nodes=2)
    for node in ("a", "b", "c"):
        stats.attempt(node, 0.001, True)
    assert stats.node("a").samples == 0  # the oldest went first
    stats.forget("c")
    assert stats.node("c").samples == 0
    assert stats.node("b").samples == 1


def test_throughput_counts_complete_seconds_of_the_window() -> None:
    clock = FakeClock()
    stats = StatsWindow(throughput_window_s=10, recent=3, clock=clock)
    for second in range(10):
        clock.now = 1000.0 + second
        for _ in range(5):
            stats.request({"request_id": str(second)}, ok=second != 3)
    clock.now = 1010.5
    assert stats.throughput() == 5.0
    assert (stats.requests_total, stats.errors_total) == (50, 5)
    assert [r["request_id"] for r in stats.recent()] == ["9", "9", "9"]  # bounded, newest first
    clock.now = 1030.0
    assert stats.throughput() == 0.0


def test_call_latency_is_over_the_last_calls_whatever_their_outcome() -> None:
    stats = StatsWindow(calls=100)
    assert (stats.calls().samples, stats.calls().p50_ms) == (0, None)
    for ms in [500.0] * 50 + [float(v) for v in range(1, 101)]:  # the 50 slow ones fall out of the window
        stats.request({}, ok=ms != 7.0, seconds=ms / 1000)
    stats.request({}, ok=True)  # a call without a duration counts, but not in the percentiles
    window = stats.calls()
    assert (window.samples, window.p50_ms, window.p95_ms, window.p99_ms) == (100, 50.0, 95.0, 99.0)
    assert stats.requests_total == 151


def _record(**fields: object) -> logging.LogRecord:
    record = logging.LogRecord("distinfer.requests", logging.INFO, __file__, 1, "POST %s %d", ("/x", 200), None)
    record.distinfer = fields
    return record


def test_json_lines_carry_the_request_fields() -> None:
    line = JsonFormatter().format(_record(request_id="r1", trace_id="t" * 32, model="digits", latency_ms=1.5))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "POST /x 200"
    assert (parsed["level"], parsed["logger"], parsed["request_id"], parsed["latency_ms"]) == (
        "info",
        "distinfer.requests",
        "r1",
        1.5,
    )


def test_text_lines_are_readable_and_skip_empty_fields() -> None:
    line = TextFormatter().format(_record(request_id="r1", node=None, mode="local"))
    assert "POST /x 200" in line
    assert "request_id=r1 mode=local" in line
    assert "node=" not in line


def test_configure_logging_picks_json_off_a_terminal_and_enables_request_lines() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("distinfer.requests").level)
    stream = io.StringIO()
    try:
        configure_logging("auto", stream=stream)
        logging.getLogger("distinfer.requests").info("hello", extra={"distinfer": {"request_id": "r9"}})
        logging.getLogger("somebody.else").info("not at info")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        logging.getLogger("distinfer.requests").setLevel(saved[2])
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["request_id"] == "r9"
