"""`distinfer bench SCENARIO`: the argument parser and the runner.

This module is imported by every `distinfer` command (the node and gateway processes too), so it
imports nothing heavy at module level; the scenario is imported when a bench actually runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.args import concurrency, duration

__all__ = ["add_bench_parser", "run"]


def add_bench_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `bench` and its scenarios on the `distinfer` command's subparsers."""
    bench = subparsers.add_parser("bench", help="performance scenarios on loopback, ratios measured side by side")
    scenarios = bench.add_subparsers(dest="scenario", required=True)
    overhead = scenarios.add_parser(
        "overhead", help="node direct vs aiohttp pass-through vs nginx vs gateway relay, JSON and binary"
    )
    overhead.add_argument("--quick", action="store_true", help="one short round per target (~30 s, smoke test)")
    overhead.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/overhead-<ts>.json)")
    overhead.add_argument("--duration", type=duration, default=None, help="seconds per measured run")
    overhead.add_argument("--concurrency", type=concurrency, default=None, help="comma list (default 1,64)")
    overhead.add_argument("--rounds", type=int, choices=range(1, 11), default=None, metavar="1..10")
    overhead.set_defaults(run=run)
    balance = scenarios.add_parser("balance", help="every strategy with one 10x-slower node, then a failover run")
    balance.add_argument("--quick", action="store_true", help="one short round (~1 minute, smoke test)")
    balance.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/balance-<ts>.json)")
    balance.add_argument("--nodes", type=int, choices=range(2, 17), default=None, metavar="2..16")
    balance.add_argument("--concurrency", type=int, choices=range(1, 257), default=None, metavar="1..256")
    balance.add_argument("--duration", type=duration, default=None, help="seconds per strategy run")
    balance.set_defaults(run=_run_balance)
    minilm = scenarios.add_parser("minilm", help="all-MiniLM-L6-v2 direct vs gateway, dynamic batching on/off")
    minilm.add_argument("--quick", action="store_true", help="one short round (smoke test)")
    minilm.add_argument("--repository", type=Path, default=None, help="where scripts/export_minilm.py wrote")
    minilm.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/minilm-<ts>.json)")
    minilm.set_defaults(run=_run_minilm)
    peer = scenarios.add_parser("peer", help="digits on MLServer (own venv) vs a distinfer node, v2 JSON")
    gateway = scenarios.add_parser("peer-gateway", help="Ray Serve (own venv) vs distinfer gateway + nodes")
    for sub in (peer, gateway):
        sub.add_argument("--quick", action="store_true", help="one short round (< 60 s once the venv exists)")
        sub.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/<name>-<ts>.json)")
        sub.add_argument("--duration", type=duration, default=None, help="seconds per measured run")
        sub.add_argument("--concurrency", type=concurrency, default=None, help="comma list (default 1,64)")
        sub.add_argument("--rounds", type=int, choices=range(1, 11), default=None, metavar="1..10")
        sub.add_argument("--venvs", type=Path, default=Path("build/venvs"), help="where the peers' venvs live")
        sub.add_argument("--setup-timeout", type=float, default=900.0, help="seconds the peer's pip install may take")
        sub.set_defaults(run=_run_peer)
    gateway.add_argument("--replicas", type=int, choices=range(1, 9), default=2, metavar="1..8")
    gateway.add_argument(
        "--ray-max-ongoing", type=int, default=64, help="Serve max_ongoing_requests per replica (0: Serve's default, 5)"
    )
    from bench.batch_cli import add_batch_parser  # light too (issue 5: batch and coalescing)
    from bench.batching_cli import add_batching_parser  # light too (issue 8: dynamic batching on/off)
    from bench.chaos.cli import add_chaos_parser  # light: imports nothing heavy at module level
    from bench.discovery_cli import add_discovery_parser  # light too (issue 4: discovery)
    from bench.scaleout_cli import add_scaleout_parser  # light too (issue 8: scale-out)
    from bench.shard_cli import add_shard_bench_parser  # light too (issue 10: sharding)

    add_batch_parser(scenarios)
    add_chaos_parser(scenarios)
    add_shard_bench_parser(scenarios)
    add_discovery_parser(scenarios)
    add_scaleout_parser(scenarios)
    add_batching_parser(scenarios)


def run(args: argparse.Namespace) -> int:
    """Run the chosen scenario, print its table, write its JSON; exit 1 if a target could not be measured."""
    from bench.report import publish, render_overhead, wide_console
    from bench.scenarios.overhead import OverheadParams, run_overhead

    console = wide_console()
    params = OverheadParams.make(
        quick=args.quick, duration_s=args.duration, concurrency=args.concurrency, rounds=args.rounds
    )
    document = run_overhead(params, console)
    return publish(document, render_overhead, args.out, "overhead", console)


def _run_balance(args: argparse.Namespace) -> int:
    """Exit 1 if the run could not be measured; whether the goals were met is in the table and the JSON."""
    from bench.balance_report import render_balance
    from bench.report import publish, wide_console
    from bench.scenarios.balance import BalanceParams, run_balance

    console = wide_console()
    params = BalanceParams.make(
        quick=args.quick, nodes=args.nodes, concurrency=args.concurrency, duration_s=args.duration
    )
    document = run_balance(params, console)
    return publish(document, render_balance, args.out, "balance", console)


def _run_minilm(args: argparse.Namespace) -> int:
    from bench.report import publish, wide_console
    from bench.scenarios.minilm import MiniLMParams, render_minilm, run_minilm

    console = wide_console()
    document = run_minilm(MiniLMParams.make(quick=args.quick, repository=args.repository), console)
    return publish(document, render_minilm, args.out, "minilm", console)


def _run_peer(args: argparse.Namespace) -> int:
    """`peer` and `peer-gateway`: exit 1 if something could not be measured (the targets' verdicts are in the JSON)."""
    from bench.peers.measure import PeerParams
    from bench.peers.report import render_peers
    from bench.report import publish, wide_console

    console = wide_console()
    params = PeerParams.make(
        quick=args.quick, duration_s=args.duration, concurrency=args.concurrency, rounds=args.rounds
    )
    if args.scenario == "peer":
        from bench.scenarios.peer import run_peer

        document = run_peer(params, console, venvs_root=args.venvs, setup_timeout_s=args.setup_timeout)
    else:
        from bench.peers.ray_serve import RayServeConfig
        from bench.scenarios.peer_gateway import run_peer_gateway

        config = RayServeConfig(replicas=args.replicas, max_ongoing_requests=args.ray_max_ongoing or None)
        document = run_peer_gateway(
            params, console, config=config, venvs_root=args.venvs, setup_timeout_s=args.setup_timeout
        )
    return publish(document, render_peers, args.out, args.scenario, console)
