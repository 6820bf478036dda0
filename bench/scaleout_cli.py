"""`distinfer bench scaleout`: registered by `bench.cli`; imports nothing heavy until the bench runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.args import duration, int_list

__all__ = ["add_scaleout_parser"]

# CONTRACT §4's balancing strategies (spelled out here: this module must stay light to import).
_STRATEGIES = ("round_robin", "least_loaded", "capability", "latency", "model_affinity", "weighted")


def _model_ms(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError("model time must be in (0, 1000] ms")
    return value


def add_scaleout_parser(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    scaleout = scenarios.add_parser(
        "scaleout", help="1, 2, 4 nodes serving one request at a time (fixed model time): efficiency vs ideal"
    )
    scaleout.add_argument("--quick", action="store_true", help="one short round, one request per node (~20 s)")
    scaleout.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/scaleout-<ts>.json)")
    scaleout.add_argument(
        "--nodes", type=int_list(1, 8, "node counts"), default=None, help="comma list with 1 in it (default 1,2,4)"
    )
    scaleout.add_argument(
        "--per-node",
        type=int_list(1, 16, "per-node loads"),
        default=None,
        help="requests in flight per node, concurrency = this x nodes; comma list (default 1,2; quick 1)",
    )
    scaleout.add_argument("--model-ms", type=_model_ms, default=None, help="model time each node adds (default 20)")
    scaleout.add_argument("--duration", type=duration, default=None, help="seconds per measured run")
    scaleout.add_argument("--rounds", type=int, choices=range(1, 11), default=None, metavar="1..10")
    scaleout.add_argument("--strategy", choices=_STRATEGIES, default=None, help="gateway strategy (least_loaded)")
    scaleout.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """Exit 1 if something could not be measured; whether the target was met is in the table and the JSON."""
    from bench.report import publish, wide_console
    from bench.scenarios.scaleout import ScaleoutParams, render_scaleout, run_scaleout

    console = wide_console()
    params = ScaleoutParams.make(
        quick=args.quick,
        nodes=args.nodes,
        per_node=args.per_node,
        model_ms=args.model_ms,
        duration_s=args.duration,
        rounds=args.rounds,
        strategy=args.strategy,
    )
    document = run_scaleout(params, console)
    return publish(document, render_scaleout, args.out, "scaleout", console)
