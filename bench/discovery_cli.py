"""`distinfer bench discovery`: its arguments and runner (imports nothing heavy until it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_discovery_parser"]


def add_discovery_parser(scenarios: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    discovery = scenarios.add_parser(
        "discovery", help="node join/leave/crash -> first/last routed request, via Consul, file, DNS"
    )
    discovery.add_argument("--quick", action="store_true", help="two trials per source, one node lifecycle")
    discovery.add_argument("--trials", type=int, choices=range(1, 51), default=None, metavar="1..50")
    discovery.add_argument("--consul-url", default=None, help="a real Consul agent (default: the fake agent)")
    discovery.add_argument(
        "--out", type=Path, default=None, help="JSON file (default bench-results/discovery-<ts>.json)"
    )
    discovery.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    """Exit 1 if something could not be measured; whether the targets were met is in the table and JSON."""
    from bench.report import publish, wide_console
    from bench.scenarios.discovery import DiscoveryParams, render_discovery, run_discovery

    console = wide_console()
    params = DiscoveryParams.make(quick=args.quick, trials=args.trials, consul_url=args.consul_url)
    document = run_discovery(params, console)
    return publish(document, render_discovery, args.out, "discovery", console)
