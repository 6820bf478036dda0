"""`distinfer bench batching` for real, cut short: two digits nodes, dynamic batching on and off.

Checks the JSON it writes, that the on/off ratio and the verdict come from the measured figures,
and that the `--batching on` node did stack requests (and the `off` one did not).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from bench.report import save
from bench.scenarios.batching import RATIO_MIN, BatchingParams, run_batching


def test_short_batching_run_measures_on_over_off(tmp_path: Path) -> None:
    params = BatchingParams(models=("digits",), concurrency=(1, 64), rounds=1, duration_s=1.0, warmup_s=0.2)
    console = Console(record=True, width=140)
    path = save(run_batching(params, console), tmp_path / "batching.json", "batching", console)
    document = json.loads(path.read_text())

    assert document["errors"] == [], document["errors"]
    expected = {"scenario", "parameters", "machine", "definition", "models", "results", "ratios", "target", "runs"}
    assert expected <= set(document)
    assert document["scenario"] == "batching"
    assert document["models"]["digits"]["status"] == "measured"
    assert set(document["models"]["digits"]["model_cpu_us_per_row"]) >= {"1"}
    assert len(document["runs"]) == 4  # 2 concurrencies x on/off x 1 round
    for concurrency in ("1", "64"):
        by_mode = document["results"]["digits"][concurrency]
        assert set(by_mode) == {"on", "off"}
        for row in by_mode.values():
            assert row["throughput"] > 0
            assert row["errors"] == row["timeouts"] == 0
            assert row["node_cpu_us_per_request"] > 0
            assert row["model_us_per_request"] > 0
        ratio = document["ratios"]["digits"][concurrency]["throughput_on_over_off"]
        assert ratio == pytest.approx(by_mode["on"]["throughput"] / by_mode["off"]["throughput"], abs=1e-3)
    at_64 = document["results"]["digits"]["64"]
    assert at_64["off"]["rows_per_call"] == 1.0
    assert at_64["on"]["rows_per_call"] > 1.0  # 64 clients: the batching node stacked requests
    target = document["target"]
    assert (target["model"], target["concurrency"], target["ratio_min"]) == ("digits", 64, RATIO_MIN)
    assert target["ratio"] == document["ratios"]["digits"]["64"]["throughput_on_over_off"]
    assert target["verdict"] == ("met" if target["ratio"] >= RATIO_MIN else "not met")
