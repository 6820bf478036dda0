"""`bench.ab`: variants parsed, medians and ratios computed, copies of the code really run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench.ab import Variant, main, parse_variant, summarise
from gateway_plugin.processes import start_gateway


def test_variants_parse_with_and_without_environment() -> None:
    assert parse_variant("base") == Variant("base", {})
    assert parse_variant("old:PYTHONPATH=/tmp/old,X=a=b") == Variant("old", {"PYTHONPATH": "/tmp/old", "X": "a=b"})


@pytest.mark.parametrize("text", ["", "direct", "passthrough", "a b", "x:NOEQUALS", "x:=value"])
def test_bad_variants_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_variant(text)


def test_summary_is_medians_over_rounds_against_direct_and_the_pass_through() -> None:
    def run(p50: float, rps: float) -> dict[str, float]:
        return {"p50_ms": p50, "p99_ms": p50 * 2, "throughput": rps, "cpu_us": 100.0}

    rounds = {
        "direct": [run(0.5, 2000), run(0.6, 1800), run(9.0, 100)],  # one disturbed round: the median ignores it
        "passthrough": [run(0.8, 1000), run(0.8, 1000), run(0.8, 1000)],
        "gw": [run(1.1, 900), run(1.0, 800), run(1.2, 700)],
    }
    summary = summarise(rounds)
    assert summary["direct"]["p50_ms"] == 0.6
    assert summary["passthrough"]["p50_over_direct_ms"] == pytest.approx(0.2)
    assert summary["gw"]["p50_over_direct_ms"] == pytest.approx(0.5)
    assert summary["gw"]["overhead_vs_passthrough"] == pytest.approx(2.5)
    assert summary["gw"]["throughput_vs_passthrough"] == pytest.approx(0.8)


def test_a_gateway_run_outside_the_checkout_runs_the_copy_on_its_pythonpath(tmp_path: Path) -> None:
    """`python -m` puts the working directory ahead of PYTHONPATH: from the checkout, the copy would be ignored."""
    copy = tmp_path / "copy" / "gateway_plugin"
    copy.mkdir(parents=True)
    (copy / "__init__.py").write_text("")
    marker = tmp_path / "ran"
    (copy / "cli.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('copy')\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    server = start_gateway({"PYTHONPATH": str(copy.parent)}, cwd=scratch)
    try:
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    assert marker.read_text() == "copy"


@pytest.mark.timeout(180)
def test_a_short_run_measures_every_target_and_writes_its_document(tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    code = main(["--variant", "base", "--rounds", "1", "--requests", "40", "--out", str(out)])
    document = json.loads(out.read_text())
    assert code == 0
    assert document["errors"] == []
    assert set(document["summary"]) == {"direct", "passthrough", "base"}
    for figures in document["summary"].values():
        assert figures["p50_ms"] > 0
        assert figures["throughput"] > 0
    assert document["summary"]["base"]["p50_over_direct_ms"] > 0  # a hop costs something
    assert document["variants"] == {"base": {}}
