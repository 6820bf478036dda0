"""`distinfer bench batch`: its arguments and runner (imports nothing heavy until it runs)."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

__all__ = ["add_batch_parser"]


def _node_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from exc
    if not counts or not all(1 <= count <= 8 for count in counts):
        raise argparse.ArgumentTypeError("node counts must be integers in 1..8")
    return counts


def add_batch_parser(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    batch = scenarios.add_parser(
        "batch", help="POST /inference/batch of 1,000 digits over 1, 2, 4 nodes, coalescing on and off"
    )
    batch.add_argument("--quick", action="store_true", help="200 images, one round (smoke test)")
    batch.add_argument("--images", type=int, default=None, help="items in the batch (default 1000)")
    batch.add_argument("--nodes", type=_node_counts, default=None, help="comma list of node counts (default 1,2,4)")
    batch.add_argument("--rounds", type=int, choices=range(1, 11), default=None, metavar="1..10")
    batch.add_argument("--max-concurrency", type=int, default=None, help="the batch's max_concurrency (default 32)")
    batch.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/batch-<ts>.json)")
    batch.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """Exit 1 if a configuration could not be measured."""
    from rich.console import Console

    from bench.report import write_json
    from bench.scenarios.batch import BatchParams, render_batch, run_batch_bench

    console = Console(width=max(Console().width, 120))
    params = BatchParams.make(
        quick=args.quick,
        images=args.images,
        nodes=args.nodes,
        rounds=args.rounds,
        max_concurrency=args.max_concurrency,
    )
    document = run_batch_bench(params, console)
    render_batch(document, console)
    out = args.out or Path("bench-results") / f"batch-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    console.print(f"results: {write_json(document, out)}")
    return 1 if document["errors"] else 0
