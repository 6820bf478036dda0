"""Interleaved A/B of gateway variants: `python -m bench.ab --variant base --variant x:KEY=VALUE`.

The instrument for a change to the relay whose effect is a few tens of µs: full `bench overhead`
runs move the c=1 ratio by ±0.1 between runs, so two runs, one per version, cannot tell such a
change from drift. Here every variant is a gateway process of its own, started with its own
environment (`PYTHONPATH=<a copy of another commit>`, a setting, a `sitecustomize` that patches
something), all in front of the same node next to the aiohttp pass-through, and the rounds
interleave them in rotated order so that drift hits every variant alike. Per target: the p50 of
each round, its median, the median over direct and its ratio to the pass-through's, throughput,
and the server process's CPU time per request (`/proc`).

Gateways run from a scratch directory: `python -m` puts the working directory first on
`sys.path`, so a gateway started from the checkout would run the checkout whatever PYTHONPATH says.

    git archive HEAD~1 | tar -x -C /tmp/old && ln -s $PWD/worker/bundled_models/* ...
    python -m bench.ab --variant head --variant old:PYTHONPATH=/tmp/old --rounds 6 --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from bench.loadgen import LoadSpec, run_load
from bench.machine import describe_machine
from bench.peers.procs import tree_cpu_seconds
from bench.report import save, wide_console
from bench.scenarios.overhead import NODE_PATH, RELAY_PATH, request_bodies
from bench.servers import start_passthrough
from gateway_plugin.processes import ServerProcess, start_gateway, start_node
from worker.bundled import bundled_models

__all__ = ["Variant", "main", "parse_variant", "summarise"]

_FIXED_TARGETS = ("direct", "passthrough")
_READY_S = 30.0
_GATEWAY_ENV = {
    "ENABLE_DISTRIBUTED_INFERENCE": "true",
    "DISTINFER_AUTH_DISABLED": "true",
    "DISTINFER_PROBE_INTERVAL_S": "1",
}


@dataclass(frozen=True, slots=True)
class Variant:
    """One gateway: its name in the results and the environment it starts with (over the bench's)."""

    name: str
    env: dict[str, str] = field(default_factory=dict)


def parse_variant(text: str) -> Variant:
    """`NAME` or `NAME:KEY=VALUE,KEY=VALUE` (a value may hold `=`, not `,`)."""
    name, _, assignments = text.partition(":")
    if not name or name in _FIXED_TARGETS or not name.replace("-", "").replace("_", "").isalnum():
        raise argparse.ArgumentTypeError(f"variant name {name!r}: letters, digits, - and _; not direct or passthrough")
    env: dict[str, str] = {}
    for assignment in filter(None, assignments.split(",")):
        key, equals, value = assignment.partition("=")
        if not equals or not key:
            raise argparse.ArgumentTypeError(f"{assignment!r} is not KEY=VALUE")
        env[key] = value
    return Variant(name, env)


def _median(values: Iterable[float]) -> float | None:
    """Over the rounds that measured something (a round without one good answer has a NaN p50)."""
    finite = [value for value in values if math.isfinite(value)]
    return statistics.median(finite) if finite else None


def _over(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None or base <= 0 else value / base


def summarise(rounds: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float | None]]:
    """Medians per target; overheads over direct, and each one's ratio to the pass-through's."""
    medians = {target: {key: _median(run[key] for run in runs) for key in runs[0]} for target, runs in rounds.items()}
    direct = medians["direct"]["p50_ms"]
    floor = _over(medians["passthrough"]["p50_ms"], direct)
    summary: dict[str, dict[str, float | None]] = {}
    for target, figures in medians.items():
        over = _over(figures["p50_ms"], direct)
        summary[target] = {
            **figures,
            "p50_over_direct_ms": over,
            "overhead_vs_passthrough": _ratio(over, floor),
            "throughput_vs_passthrough": _ratio(figures["throughput"], medians["passthrough"]["throughput"]),
        }
    return summary


def _start(stack: ExitStack, variants: Sequence[Variant]) -> dict[str, ServerProcess]:
    node = start_node(bundled_models(), "ab-node", threads=1)
    stack.callback(node.stop)
    servers = {"direct": node, "passthrough": start_passthrough(node.url)}
    stack.callback(servers["passthrough"].stop)
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="distinfer-ab-")))
    for variant in variants:
        env = {**_GATEWAY_ENV, "DISTINFER_NODES": node.url, **variant.env}
        servers[variant.name] = start_gateway(env, cwd=scratch)
        stack.callback(servers[variant.name].stop)
    for server in servers.values():
        server.wait_ready(90)
    return servers


async def _answers(url: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """Whether the target answers 200, retried while a gateway's first probe of the node is still due."""
    deadline = time.monotonic() + _READY_S
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status == 200:
                    return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)


async def _measure(
    urls: dict[str, str], pids: dict[str, int], args: argparse.Namespace
) -> tuple[dict[str, list[dict[str, float]]], list[str]]:
    body = request_bodies()[args.encoding]
    targets = list(urls)
    rounds: dict[str, list[dict[str, float]]] = {target: [] for target in targets}
    errors: list[str] = []

    def spec(target: str, requests: int) -> LoadSpec:
        return LoadSpec(urls[target], body.data, body.headers, concurrency=args.concurrency, requests=requests)

    for target in targets:
        if not await _answers(urls[target], body.data, body.headers):
            return {}, [f"{target}: no 200 answer within {_READY_S:.0f} s"]
    for target in targets:  # warm-up: connections, remembered headers
        await run_load(spec(target, min(args.requests, 500)))
    for number in range(args.rounds):
        shift = number % len(targets)
        for target in targets[shift:] + targets[:shift]:
            cpu_before = tree_cpu_seconds([pids[target]])
            result = await run_load(spec(target, args.requests))
            cpu_us = (tree_cpu_seconds([pids[target]]) - cpu_before) / result.requests * 1e6
            if result.errors or result.timeouts:
                errors.append(f"{target} round {number}: {result.errors} errors, {result.timeouts} timeouts")
            rounds[target].append(
                {"p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "throughput": result.throughput, "cpu_us": cpu_us}
            )
    return rounds, errors


def _render(summary: dict[str, dict[str, float | None]], console: Console) -> None:
    table = Table(title="A/B: medians over interleaved rounds", title_justify="left")
    for column in ("target", "p50 ms", "+p50 ms", "x pass-through", "p99 ms", "req/s", "x pt req/s", "cpu µs/req"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for target, figures in summary.items():

        def cell(key: str, digits: int = 3, figures: dict[str, float | None] = figures) -> str:
            value = figures[key]
            return "-" if value is None else f"{value:.{digits}f}"

        table.add_row(
            target,
            cell("p50_ms"),
            cell("p50_over_direct_ms"),
            cell("overhead_vs_passthrough", 2),
            cell("p99_ms"),
            cell("throughput", 0),
            cell("throughput_vs_passthrough", 3),
            cell("cpu_us", 0),
        )
    console.print(table)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--variant", type=parse_variant, action="append", required=True, help="NAME[:KEY=VALUE,...]")
    parser.add_argument("--encoding", choices=("binary", "json"), default="binary")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=3000, help="per target and round")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/ab-<ts>.json)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = [variant.name for variant in args.variant]
    if len(set(names)) != len(names):
        _parser().error("variant names must differ")
    if args.rounds < 1 or args.requests < 1 or args.concurrency < 1:
        _parser().error("--rounds, --requests and --concurrency must be positive")
    console = wide_console()
    with ExitStack() as stack:
        servers = _start(stack, args.variant)
        urls = {
            name: server.url + (RELAY_PATH if name not in _FIXED_TARGETS else NODE_PATH)
            for name, server in servers.items()
        }
        pids = {name: server.process.pid for name, server in servers.items()}
        rounds, errors = asyncio.run(_measure(urls, pids, args))
    summary = summarise(rounds) if rounds else {}
    _render(summary, console)
    for error in errors:
        console.print(f"[red]{error}[/red]")
    document: dict[str, Any] = {
        "scenario": "ab",
        "machine": describe_machine(),
        "params": {k: v for k, v in vars(args).items() if k not in ("variant", "out")},
        "variants": {variant.name: variant.env for variant in args.variant},
        "rounds": rounds,
        "summary": summary,
        "errors": errors,
    }
    save(document, args.out, "ab", console)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
