"""`distinfer bench shard`: registered by `bench.cli`; imports nothing heavy until the bench runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.args import duration

__all__ = ["add_shard_bench_parser"]


def add_shard_bench_parser(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    shard = scenarios.add_parser(
        "shard", help="1 node vs 2 stages on 2 nodes: micro-batches, relayed vs node-to-node, latency per hop"
    )
    shard.add_argument("--quick", action="store_true", help="one short round (~1 minute, smoke test)")
    shard.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/shard-<ts>.json)")
    shard.add_argument("--duration", type=duration, default=None, help="seconds per measured run")
    shard.add_argument("--rounds", type=int, choices=range(1, 11), default=None, metavar="1..10")
    shard.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """Exit 1 if something could not be measured; whether the target was met is in the table and the JSON."""
    from bench.report import publish, wide_console
    from bench.scenarios.shard import ShardBenchParams, render_shard, run_shard

    console = wide_console()
    document = run_shard(ShardBenchParams.make(quick=args.quick, duration_s=args.duration, rounds=args.rounds), console)
    return publish(document, render_shard, args.out, "shard", console)
