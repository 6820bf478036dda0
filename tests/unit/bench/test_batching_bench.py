"""`distinfer bench batching` without node processes: parameters, summary (medians, ratio, verdict), JSON, table."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bench import batching_cli
from bench.batching_cli import add_batching_parser
from bench.scenarios import batching
from bench.scenarios.batching import (
    BatchingParams,
    Workload,
    machine_busy_seconds,
    model_cpu_per_row,
    node_cpu_seconds,
    render_batching,
    run_batching,
    summarise,
)
from bench.scenarios.overhead import request_bodies
from worker.bundled import bundled_models

PARAMS = BatchingParams(models=("digits",), concurrency=(1, 64), rounds=2)


def _run(mode: str, concurrency: int, round_: int, throughput: float, cpu_us: float, rows: float) -> dict[str, Any]:
    """One measured run as _measure records it (raw figures only): 2 s, `throughput` answers a second."""
    ok = int(throughput * 2)
    return {
        "model": "digits",
        "mode": mode,
        "concurrency": concurrency,
        "round": round_,
        "requests": ok,
        "ok": ok,
        "errors": 0,
        "timeouts": 0,
        "elapsed_s": 2.0,
        "throughput": throughput,
        "p50_ms": 10.0 + round_,
        "p99_ms": 20.0 + round_,
        "client_cpu_share": 0.3,
        "node_cpu_s": cpu_us * ok / 1e6,
        "machine_busy_s": 3.0,
        "node_runtime_calls": ok / rows,
        "node_rows": float(ok),
    }


def _runs(on: tuple[float, float], off: tuple[float, float]) -> list[dict[str, Any]]:
    """Two rounds at c=64 with the given on/off throughputs, and a c=1 pair; CPU per request 100 on, 250 off."""
    runs = [_run("on", 1, 1, 300.0, 600.0, 1.0), _run("off", 1, 1, 1200.0, 400.0, 1.0)]
    for round_ in (1, 2):
        runs.append(_run("on", 64, round_, on[round_ - 1], 100.0, 32.0))
        runs.append(_run("off", 64, round_, off[round_ - 1], 250.0, 1.0))
    return runs


def test_params_quick_defaults_and_bounds() -> None:
    assert BatchingParams.make() == BatchingParams()
    quick = BatchingParams.make(quick=True, models=("minilm", "digits", "minilm"), concurrency=(64, 1, 64))
    assert (quick.models, quick.concurrency, quick.rounds, quick.quick) == (("minilm", "digits"), (1, 64), 1, True)
    assert (BatchingParams().threads, BatchingParams().workers) == (1, 2)  # the same for both nodes
    with pytest.raises(ValueError, match="models"):
        BatchingParams.make(models=("resnet",))
    with pytest.raises(ValueError, match="concurrency"):
        BatchingParams.make(concurrency=(0,))


def test_ratio_is_on_over_off_of_the_medians_and_the_verdict_follows_it() -> None:
    costs = {"digits": {"1": 15.0, "32": 5.0}}
    results, ratios, target = summarise(_runs(on=(6000.0, 7000.0), off=(2000.0, 2200.0)), PARAMS, costs)
    on, off = results["digits"]["64"]["on"], results["digits"]["64"]["off"]
    assert (on["throughput"], off["throughput"]) == (6500.0, 2100.0)
    assert (on["p50_ms"], on["rounds"], on["ok"]) == (11.5, 2, 26000)
    assert (on["node_cpu_us_per_request"], off["node_cpu_us_per_request"]) == (100.0, 250.0)
    assert (on["rows_per_call"], on["model_batch"], off["model_batch"]) == (32.0, 32, 1)
    assert (on["model_us_per_request"], on["other_us_per_request"]) == (5.0, 95.0)
    assert (off["model_us_per_request"], off["other_us_per_request"]) == (15.0, 235.0)
    assert on["node_cores"] == pytest.approx(6500 * 100e-6, abs=1e-3)
    assert on["machine_cores"] == 1.5
    figures = ratios["digits"]["64"]
    assert figures["throughput_on_over_off"] == round(6500.0 / 2100.0, 3)
    assert figures["node_cpu_per_request_off_over_on"] == 2.5
    # throughput = cores / CPU per request, so the ratio splits into the CPU gain times the cores ratio.
    product = figures["node_cpu_per_request_off_over_on"] * figures["node_cores_on_over_off"]
    assert product == pytest.approx(figures["throughput_on_over_off"], rel=1e-2)
    assert figures["model_share_of_node_cpu_off"] == round(15.0 / 250.0, 3)
    assert figures["cpu_gain_if_model_free"] == round(250.0 / 235.0, 3)
    assert ratios["digits"]["1"]["throughput_on_over_off"] == 0.25
    assert target == {
        "model": "digits",
        "concurrency": 64,
        "ratio_min": 3.0,
        "ratio": figures["throughput_on_over_off"],
        "verdict": "met",
        "met": True,
        "node_cpu_us_per_request_on_needed_at_equal_cores": round(250.0 / 3, 1),
        "node_cpu_us_per_request_on": 100.0,
        "other_us_per_request_on": 95.0,
    }


def test_below_three_is_not_met_and_without_c64_or_costs_it_is_not_measured_or_split() -> None:
    results, ratios, target = summarise(_runs(on=(3400.0, 3500.0), off=(2000.0, 2100.0)), PARAMS)
    assert (target["verdict"], target["met"], target["ratio"]) == ("not met", False, round(3450.0 / 2050.0, 3))
    assert results["digits"]["64"]["on"]["model_us_per_request"] is None  # no calibration given
    assert ratios["digits"]["64"]["cpu_gain_if_model_free"] is None
    only_one = BatchingParams(models=("digits",), concurrency=(1,))
    _, ratios, target = summarise(_runs(on=(1.0, 1.0), off=(1.0, 1.0)), only_one)
    assert (list(ratios["digits"]), target["verdict"], target["met"], target["ratio"]) == (
        ["1"],
        "not measured",
        None,
        None,
    )
    assert summarise([], PARAMS) == ({}, {}, target)


def test_missing_minilm_export_is_skipped_with_its_reason_and_the_document_is_json(tmp_path: Path) -> None:
    params = BatchingParams(models=("minilm",), minilm_repository=tmp_path, rounds=1, duration_s=0.1)
    console = Console(record=True, width=140)
    document = run_batching(params, console)
    assert document["errors"] == []
    assert "make minilm" in document["skipped"]["minilm"]
    assert document["models"]["minilm"]["status"] == "skipped"
    assert (document["results"], document["runs"], document["target"]["verdict"]) == ({}, [], "not measured")
    assert any("minilm skipped" in line for line in document["warnings"])
    expected = {"scenario", "started_at", "parameters", "machine", "definition", "models", "skipped", "results"}
    assert expected | {"ratios", "target", "errors", "warnings", "runs", "wall_s"} == set(document)
    assert json.loads(json.dumps(document, allow_nan=False))["parameters"]["minilm_repository"] == str(tmp_path)
    render_batching(document, console)
    assert "not measured" in console.export_text()


def test_cpu_readings_and_the_model_calibration() -> None:
    assert node_cpu_seconds(os.getpid()) > 0
    assert machine_busy_seconds() > 0
    body = request_bodies()["binary"]
    workload = Workload("digits", bundled_models(), "/v2/models/digits/infer", body.data, body.headers)
    costs = model_cpu_per_row(workload, threads=1, batch_sizes=[8, 1, 8], budget_s=0.01)
    assert set(costs) == {"1", "8"}
    assert all(value > 0 for value in costs.values())


def test_cli_models_and_table() -> None:
    assert batching_cli.MODELS == batching.MODELS
    parser = argparse.ArgumentParser()
    add_batching_parser(parser.add_subparsers(dest="scenario"))
    args = parser.parse_args(["batching", "--quick", "--models", "digits", "--concurrency", "64,1", "--rounds", "2"])
    assert (args.quick, args.models, args.concurrency, args.rounds) == (True, ("digits",), (64, 1), 2)
    with pytest.raises(SystemExit):
        parser.parse_args(["batching", "--models", "digits,resnet"])
    results, ratios, target = summarise(_runs(on=(3400.0, 3500.0), off=(2000.0, 2100.0)), PARAMS)
    document = {
        "results": results,
        "ratios": ratios,
        "target": target,
        "machine": {"nproc": 2, "loadavg_at_start": [1.0, 1.0, 1.0], "loadavg_at_end": [2.0, 1.0, 1.0]},
        "wall_s": 12.0,
        "errors": [],
        "warnings": ["a warning"],
    }
    console = Console(record=True, width=140)
    render_batching(document, console)
    text = console.export_text()
    assert all(part in text for part in ("3450.0", "1.68x", "not met", "a warning"))
