"""`distinfer bench scaleout` for real, cut short: node processes that serve one request at a time, gateways.

Checks the JSON it writes and that efficiency comes from what was measured, and that the node's
`--max-concurrency 1` holds: one node cannot answer faster than its model time allows however
many clients push it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from bench.report import save
from bench.scenarios.scaleout import ScaleoutParams, run_scaleout

MODEL_MS = 20.0


def test_short_scaleout_run_measures_efficiency_against_one_node(tmp_path: Path) -> None:
    params = ScaleoutParams(nodes=(1, 2), per_node=(1, 2), model_ms=MODEL_MS, duration_s=1.0, warmup_s=0.2, rounds=1)
    console = Console(record=True, width=140)
    path = save(run_scaleout(params, console), tmp_path / "scaleout.json", "scaleout", console)
    document = json.loads(path.read_text())

    assert document["errors"] == [], document["errors"]
    assert {"scenario", "parameters", "machine", "definition", "results", "target", "runs", "wall_s"} <= set(document)
    assert document["scenario"] == "scaleout"
    rows = {(row["nodes"], row["per_node"]): row for row in document["results"]}
    assert set(rows) == {(1, 1), (2, 1), (1, 2), (2, 2)}
    for (nodes, per_node), row in rows.items():
        single = rows[(1, per_node)]["throughput"]
        assert row["failed"] == 0
        assert row["concurrency"] == nodes * per_node
        assert row["throughput"] > 0
        assert row["ideal"] == pytest.approx(nodes * single, abs=0.02)
        assert row["efficiency"] == pytest.approx(row["throughput"] / (nodes * single), abs=1e-3)
        assert row["p50_ms"] >= MODEL_MS  # every answer waited the model time
        assert len(row["by_node"]) == nodes  # the gateway used every node
    # One node is one request at a time: two clients cannot get more than 1000 / model_ms answers a second.
    assert rows[(1, 2)]["throughput"] <= 1000 / MODEL_MS * 1.05
    # Four nodes were not measured, so the target has no verdict either way.
    assert document["target"]["met"] is None
