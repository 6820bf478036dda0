"""`distinfer bench SCENARIO`: the argument parser and the runner.

This module is imported by every `distinfer` command (the node and gateway processes too), so it
imports nothing heavy at module level; the scenario is imported when a bench actually runs.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

__all__ = ["add_bench_parser", "run"]

RESULTS_DIR = Path("bench-results")


def _concurrency(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from exc
    if not levels or not all(1 <= level <= 512 for level in levels):
        raise argparse.ArgumentTypeError("concurrency levels must be integers in 1..512")
    return levels


def _duration(text: str) -> float:
    value = float(text)
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError("duration must be in (0, 60] seconds")
    return value


def add_bench_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `bench` and its scenarios on the `distinfer` command's subparsers."""
    bench = subparsers.add_parser("bench", help="performance scenarios on loopback, ratios measured side by side")
    scenarios = bench.add_subparsers(dest="scenario", required=True)
    overhead = scenarios.add_parser(
        "overhead", help="node direct vs aiohttp pass-through vs nginx vs gateway relay, JSON and binary"
    )
    overhead.add_argument("--quick", action="store_true", help="one short round per target (~30 s, smoke test)")
    overhead.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/overhead-<ts>.json)")
    overhead.add_argument("--duration", type=_duration, default=None, help="seconds per measured run")
    overhead.add_argument("--concurrency", type=_concurrency, default=None, help="comma list (default 1,64)")
    overhead.add_argument("--rounds", type=int, choices=range(1, 11), default=None, metavar="1..10")
    overhead.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen scenario, print its table, write its JSON; exit 1 if a target could not be measured."""
    from rich.console import Console

    from bench.report import render_overhead, write_json
    from bench.scenarios.overhead import OverheadParams, run_overhead

    console = Console(width=max(Console().width, 120))  # a pipe reads as 80 columns: too narrow for the table
    params = OverheadParams.make(
        quick=args.quick, duration_s=args.duration, concurrency=args.concurrency, rounds=args.rounds
    )
    document = run_overhead(params, console)
    render_overhead(document, console)
    out = args.out or RESULTS_DIR / f"overhead-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    console.print(f"results: {write_json(document, out)}")
    return 1 if document["errors"] else 0
