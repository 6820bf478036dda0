"""`distinfer bench chaos`: the long reliability run (the short one is part of `make test`)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_chaos_parser", "run"]


def add_chaos_parser(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    chaos = scenarios.add_parser(
        "chaos", help="fault injection with real processes, schemathesis, v2 parser fuzz, oversized bodies"
    )
    chaos.add_argument("--quick", action="store_true", help="the short plan `make test` runs (~1 min)")
    chaos.add_argument("--only", default=None, help="comma list of fault scenarios (default: all)")
    chaos.add_argument("--api-examples", type=int, default=None, help="schemathesis examples per operation and mode")
    chaos.add_argument("--parser-examples", type=int, default=None, help="v2 parser fuzz cases")
    chaos.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/chaos-<ts>.json)")
    chaos.add_argument("--markdown", action="store_true", help="also print the README table")
    chaos.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the plan, print the table, write the JSON; exit 1 when a target is not met."""
    import asyncio

    from bench.chaos.report import markdown, render
    from bench.chaos.run import ChaosPlan, run_chaos
    from bench.chaos.scenarios import ChaosParams
    from bench.report import save, wide_console
    from worker.bundled import bundled_models

    console = wide_console()
    base = ChaosPlan(ChaosParams.short(), api_examples=5, parser_examples=300) if args.quick else ChaosPlan.long()
    plan = ChaosPlan(
        base.params,
        scenarios=args.only.split(",") if args.only else None,
        api_examples=base.api_examples if args.api_examples is None else args.api_examples,
        parser_examples=base.parser_examples if args.parser_examples is None else args.parser_examples,
    )
    document = asyncio.run(run_chaos(plan, bundled_models(), console))
    render(document, console)
    if args.markdown:
        console.print(markdown(document), markup=False, highlight=False)
    save(document, args.out, "chaos", console)
    return 0 if document["all_met"] else 1
