"""`distinfer bench scaleout` without processes: parameters, the summary (ideal, efficiency), verdict, table."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from rich.console import Console

from bench.scaleout_cli import add_scaleout_parser
from bench.scenarios.scaleout import ScaleoutParams, render_scaleout, summarise

PARAMS = ScaleoutParams(nodes=(1, 2, 4), per_node=(1, 2), rounds=2, model_ms=20.0)


def _runs(throughput: dict[tuple[int, int], tuple[float, float]]) -> list[dict[str, Any]]:
    """Two rounds per (nodes, per_node), with the given throughputs; each node served alike."""
    return [
        {
            "round": round_ + 1,
            "nodes": nodes,
            "per_node": per_node,
            "throughput": values[round_],
            "p50_ms": 25.0 + round_,
            "p99_ms": 30.0 + round_,
            "requests": 100,
            "failed": 0,
            "by_node": {f"node-{i + 1}": 100 // nodes for i in range(nodes)},
        }
        for (nodes, per_node), values in throughput.items()
        for round_ in range(2)
    ]


def test_params_quick_defaults_and_bounds() -> None:
    assert ScaleoutParams.make() == ScaleoutParams()
    quick = ScaleoutParams.make(quick=True, nodes=(4, 1, 4))
    assert (quick.nodes, quick.per_node, quick.rounds, quick.quick) == ((1, 4), (1,), 1, True)
    with pytest.raises(ValueError, match="include 1"):
        ScaleoutParams.make(nodes=(2, 4))
    with pytest.raises(ValueError, match="model time"):
        ScaleoutParams.make(model_ms=5000)


def test_efficiency_is_measured_throughput_over_n_times_one_node() -> None:
    runs = _runs(
        {
            (1, 1): (40.0, 42.0),  # median 41
            (2, 1): (80.0, 82.0),  # 81
            (4, 1): (150.0, 158.0),  # 154
            (1, 2): (45.0, 45.0),
            (2, 2): (90.0, 88.0),
            (4, 2): (170.0, 172.0),
        }
    )
    rows, target = summarise(runs, PARAMS)
    by = {(row["nodes"], row["per_node"]): row for row in rows}
    assert by[(1, 1)]["throughput"] == 41.0
    assert by[(4, 1)]["ideal"] == 164.0
    assert by[(4, 1)]["efficiency"] == round(154.0 / 164.0, 3)
    assert by[(2, 2)]["efficiency"] == round(89.0 / 90.0, 3)
    assert by[(4, 1)]["utilisation"] == round(154.0 / (4 * 50.0), 3)
    assert (by[(4, 1)]["concurrency"], by[(4, 2)]["concurrency"]) == (4, 8)
    two = by[(2, 1)]
    assert (two["p50_ms"], two["rounds"], two["by_node"]) == (25.5, 2, {"node-1": 100, "node-2": 100})
    assert target["efficiency_by_per_node_load"] == {"1": 0.939, "2": round(171.0 / 180.0, 3)}
    assert target["met"] is True


def test_below_the_target_at_any_load_is_not_met_and_without_four_nodes_not_measured() -> None:
    runs = _runs({(1, 1): (40.0, 40.0), (4, 1): (120.0, 120.0), (1, 2): (45.0, 45.0), (4, 2): (175.0, 175.0)})
    assert summarise(runs, PARAMS)[1]["met"] is False
    few = ScaleoutParams(nodes=(1, 2), per_node=(1,))
    rows, target = summarise(_runs({(1, 1): (40.0, 40.0), (2, 1): (80.0, 80.0)}), few)
    assert (len(rows), target["met"], target["efficiency_by_per_node_load"]) == (2, None, {})


def test_nothing_measured_gives_no_rows_and_no_verdict() -> None:
    rows, target = summarise([], PARAMS)
    assert (rows, target["efficiency_by_per_node_load"], target["met"]) == ([], {}, None)


def test_cli_and_table() -> None:
    parser = argparse.ArgumentParser()
    add_scaleout_parser(parser.add_subparsers(dest="scenario"))
    args = parser.parse_args(["scaleout", "--quick", "--nodes", "1,4", "--per-node", "1,3", "--model-ms", "10"])
    assert (args.quick, args.nodes, args.per_node, args.model_ms) == (True, (1, 4), (1, 3), 10.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["scaleout", "--model-ms", "0"])
    rows, target = summarise(_runs({(1, 1): (40.0, 40.0), (4, 1): (150.0, 150.0)}), PARAMS)
    document = {
        "parameters": {"model_ms": 20.0},
        "results": rows,
        "target": target,
        "machine": {"nproc": 2, "loadavg_at_start": [1.0, 1.0, 1.0], "loadavg_at_end": [2.0, 1.0, 1.0]},
        "wall_s": 12.0,
        "setup_s": 5.0,
        "errors": [],
        "warnings": [],
    }
    console = Console(record=True, width=140)
    render_scaleout(document, console)
    text = console.export_text()
    assert all(figure in text for figure in ("150.0", "0.94", "met"))
