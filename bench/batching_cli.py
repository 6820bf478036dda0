"""`distinfer bench batching`: registered by `bench.cli`; imports nothing heavy until the bench runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.args import concurrency, duration

__all__ = ["MODELS", "add_batching_parser", "models"]

# The models the scenario knows (bench.scenarios.batching.MODELS; spelled out here to keep this module light).
MODELS = ("digits", "minilm")


def models(text: str) -> tuple[str, ...]:
    """An argparse type: a comma list of known model names, in the order given, without repeats."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"models must be a comma list of {', '.join(MODELS)}")
    return names


def add_batching_parser(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    batching = scenarios.add_parser(
        "batching", help="digits and MiniLM direct to a node, dynamic batching on vs off, c=1 and c=64"
    )
    batching.add_argument("--quick", action="store_true", help="one short round per target (~25 s, smoke test)")
    batching.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/batching-<ts>.json)")
    batching.add_argument("--models", type=models, default=None, help="comma list (default digits,minilm)")
    batching.add_argument("--concurrency", type=concurrency, default=None, help="comma list (default 1,64)")
    batching.add_argument("--duration", type=duration, default=None, help="seconds per measured run")
    batching.add_argument("--rounds", type=int, choices=range(1, 11), default=None, metavar="1..10")
    batching.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """Exit 1 if something could not be measured; the target's verdict is in the table and the JSON."""
    from bench.report import publish, wide_console
    from bench.scenarios.batching import BatchingParams, render_batching, run_batching

    console = wide_console()
    params = BatchingParams.make(
        quick=args.quick,
        models=args.models,
        concurrency=args.concurrency,
        duration_s=args.duration,
        rounds=args.rounds,
    )
    document = run_batching(params, console)
    return publish(document, render_batching, args.out, "batching", console)
