"""`distinfer bench batch`: its arguments and runner (imports nothing heavy until it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.args import int_list

__all__ = ["add_batch_parser"]


def add_batch_parser(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    batch = scenarios.add_parser(
        "batch", help="POST /inference/batch of 1,000 digits over 1, 2, 4 nodes, coalescing on and off"
    )
    batch.add_argument("--quick", action="store_true", help="200 images, one round (smoke test)")
    batch.add_argument("--images", type=int, default=None, help="items in the batch (default 1000)")
    batch.add_argument(
        "--nodes", type=int_list(1, 8, "node counts"), default=None, help="comma list of node counts (default 1,2,4)"
    )
    batch.add_argument("--rounds", type=int, choices=range(1, 11), default=None, metavar="1..10")
    batch.add_argument("--max-concurrency", type=int, default=None, help="the batch's max_concurrency (default 32)")
    batch.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/batch-<ts>.json)")
    batch.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """Exit 1 if a configuration could not be measured."""
    from bench.report import publish, wide_console
    from bench.scenarios.batch import BatchParams, render_batch, run_batch_bench

    console = wide_console()
    params = BatchParams.make(
        quick=args.quick,
        images=args.images,
        nodes=args.nodes,
        rounds=args.rounds,
        max_concurrency=args.max_concurrency,
    )
    document = run_batch_bench(params, console)
    return publish(document, render_batch, args.out, "batch", console)
