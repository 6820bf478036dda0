"""`distinfer bench scaleout`: throughput over 1, 2 and 4 nodes that each serve one request at a time.

Every node is a separate process serving `digits` with a fixed model time (`--fault-latency-ms`,
default 20 ms, on top of the model's own ~1 ms) and `--max-concurrency 1`, so a node can answer
at most one request per model time however hard it is pushed. One gateway process per node count
(over the first n nodes) runs with `DISTINFER_NODE_MAX_IN_FLIGHT=1`: a node with a request in
flight is `busy` and the next request goes to a free one. Closed-loop load through the gateway's
`POST /inference` at `per_node` x n concurrent clients; rounds interleave the node counts in a
rotated order so drift of the machine hits them alike; figures are medians over rounds.

    ideal(n)      = n x throughput(1 node) at the same per-node load
    efficiency(n) = throughput(n) / ideal(n)
    utilisation   = throughput / (n x 1000 / model_ms): how busy the nodes' model time kept them

Target (issue 8): efficiency >= 0.9 at 4 nodes. This process is the client only.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.machine import describe_machine, load_average
from bench.nodeload import run_node_load
from gateway_plugin.processes import ServerProcess, start_gateway, start_node
from worker.bundled import bundled_models

__all__ = ["EFFICIENCY_MIN", "TARGET_NODES", "ScaleoutParams", "render_scaleout", "run_scaleout", "summarise"]

PREFIX = "/api/v1/distributed"
TARGET_NODES = 4
EFFICIENCY_MIN = 0.9
_BODY = json.dumps({"model": "digits", "inputs": [[0.0, 0.0, 0.3, 0.8, 0.8, 0.1, 0.0, 0.0]] * 8}).encode()


@dataclass(frozen=True, slots=True)
class ScaleoutParams:
    """Default: about 55 s (3 rounds, so one disturbed run is not the median); `quick`: about 20 s."""

    nodes: tuple[int, ...] = (1, 2, 4)
    per_node: tuple[int, ...] = (1, 2)  # requests in flight per node: concurrency = per_node x nodes
    model_ms: float = 20.0
    duration_s: float = 2.0
    warmup_s: float = 0.3
    rounds: int = 3
    strategy: str = "least_loaded"
    timeout_s: float = 10.0
    quick: bool = False

    @classmethod
    def make(
        cls,
        *,
        quick: bool = False,
        nodes: tuple[int, ...] | None = None,
        per_node: tuple[int, ...] | None = None,
        model_ms: float | None = None,
        duration_s: float | None = None,
        rounds: int | None = None,
        strategy: str | None = None,
    ) -> ScaleoutParams:
        base = cls(per_node=(1,), rounds=1, quick=True) if quick else cls()
        params = cls(
            nodes=tuple(sorted(set(nodes or base.nodes))),
            per_node=tuple(sorted(set(per_node or base.per_node))),
            model_ms=model_ms or base.model_ms,
            duration_s=duration_s or base.duration_s,
            warmup_s=base.warmup_s,
            rounds=rounds or base.rounds,
            strategy=strategy or base.strategy,
            quick=quick,
        )
        if not params.nodes or not all(1 <= n <= 8 for n in params.nodes):
            raise ValueError("node counts must be 1..8")
        if 1 not in params.nodes:
            raise ValueError("node counts must include 1: efficiency is measured against one node")
        if not params.per_node or not all(1 <= k <= 16 for k in params.per_node):
            raise ValueError("per-node loads must be 1..16")
        if not 0 < params.model_ms <= 1000 or not 0 < params.duration_s <= 60 or not 1 <= params.rounds <= 10:
            raise ValueError("model time must be in (0, 1000] ms, duration in (0, 60] s and rounds 1..10")
        return params


def _node_args(params: ScaleoutParams) -> list[str]:
    model_time = ["--fault-latency-ms", f"{params.model_ms:g}"]
    return ["--models", "digits", "--workers", "1", "--batching", "off", "--max-concurrency", "1", *model_time]


def _gateway_env(nodes: list[ServerProcess], strategy: str) -> dict[str, str]:
    return {
        "ENABLE_DISTRIBUTED_INFERENCE": "true",
        "DISTINFER_AUTH_DISABLED": "true",
        "DISTINFER_NODES": ",".join(node.url for node in nodes),
        "DISTINFER_NODE_MAX_IN_FLIGHT": "1",  # the nodes' own limit, known to the gateway: busy at one
        "DISTINFER_STRATEGY": strategy,
        "DISTINFER_MAX_INFLIGHT": "0",
        "DISTINFER_PROBE_INTERVAL_S": "1",
    }


def _start(stack: ExitStack, params: ScaleoutParams) -> tuple[list[ServerProcess], dict[int, ServerProcess]]:
    """Every node, and one gateway per node count over the first n nodes; all started before any wait."""
    args, repository = _node_args(params), bundled_models()
    nodes = [start_node(repository, f"node-{i + 1}", threads=1, extra_args=args) for i in range(max(params.nodes))]
    for node in nodes:
        stack.callback(node.stop)
    gateways: dict[int, ServerProcess] = {}
    for count in params.nodes:
        gateways[count] = start_gateway(_gateway_env(nodes[:count], params.strategy))
        stack.callback(gateways[count].stop)
    for server in (*nodes, *gateways.values()):
        server.wait_ready(timeout_s=90.0)
    return nodes, gateways


def _wait_serving(gateway: ServerProcess, count: int, timeout_s: float = 30.0) -> None:
    """All `count` nodes online in the gateway's view, and one inference answered by the cluster."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=gateway.url, timeout=5.0) as client:
        while time.monotonic() < deadline:
            nodes = client.get(f"{PREFIX}/nodes").json()
            if isinstance(nodes, list) and sum(node.get("status") == "online" for node in nodes) >= count:
                answer = client.post(f"{PREFIX}/inference", content=_BODY, headers={"Content-Type": "application/json"})
                if answer.status_code == 200 and answer.headers.get("x-inference-mode") == "distributed":
                    return
            time.sleep(0.2)
    raise TimeoutError(f"the gateway over {count} node(s) is not serving from them within {timeout_s}s")


async def _measure(
    gateways: dict[int, ServerProcess], params: ScaleoutParams, console: Console
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    counts = list(params.nodes)
    for round_ in range(params.rounds):
        shift = round_ % len(counts)
        for count in counts[shift:] + counts[:shift]:
            url = f"{gateways[count].url}{PREFIX}/inference"
            for per_node in params.per_node:
                concurrency = per_node * count
                if params.warmup_s > 0:  # connections opened, the gateway's latency figures settled
                    await run_node_load(url, [_BODY], concurrency=concurrency, duration_s=params.warmup_s)
                result = await run_node_load(
                    url, [_BODY], concurrency=concurrency, duration_s=params.duration_s, timeout_s=params.timeout_s
                )
                figures = result.summary()
                runs.append({"round": round_ + 1, "nodes": count, "per_node": per_node, **figures})
                console.print(
                    f"[dim]{round_ + 1}/{params.rounds} nodes {count} c={concurrency:<3} "
                    f"{figures['throughput']:7.1f}/s p50 {figures['p50_ms']} p99 {figures['p99_ms']} ms "
                    f"failed {figures['failed']} by node {figures['by_node']}[/dim]",
                    highlight=False,
                )
    return runs


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarise(runs: list[dict[str, Any]], params: ScaleoutParams) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows per node count and per-node load (medians over rounds) with ideal and efficiency; the verdict."""
    rows: list[dict[str, Any]] = []
    single: dict[int, float | None] = {}
    for per_node in params.per_node:
        for count in params.nodes:
            mine = [run for run in runs if run["nodes"] == count and run["per_node"] == per_node]
            if not mine:
                continue
            throughput = _median([run["throughput"] for run in mine])
            if count == 1:
                single[per_node] = throughput
            base = single.get(per_node)
            ideal = None if not base else count * base
            by_node: dict[str, int] = {}
            for run in mine:
                for node, served in run["by_node"].items():
                    by_node[node] = by_node.get(node, 0) + served
            rows.append(
                {
                    "nodes": count,
                    "per_node": per_node,
                    "concurrency": count * per_node,
                    "throughput": _round(throughput, 2),
                    "p50_ms": _round(_median([run["p50_ms"] for run in mine]), 3),
                    "p99_ms": _round(_median([run["p99_ms"] for run in mine]), 3),
                    "requests": sum(run["requests"] for run in mine),
                    "failed": sum(run["failed"] for run in mine),
                    "by_node": dict(sorted(by_node.items())),
                    "ideal": _round(ideal, 2),
                    "efficiency": _round(None if throughput is None or not ideal else throughput / ideal, 3),
                    "utilisation": _round(
                        None if throughput is None else throughput / (count * 1000.0 / params.model_ms), 3
                    ),
                    "rounds": len(mine),
                }
            )
    at_target = {str(row["per_node"]): row["efficiency"] for row in rows if row["nodes"] == TARGET_NODES}
    measured = bool(at_target) and all(value is not None for value in at_target.values())
    target = {
        "nodes": TARGET_NODES,
        "efficiency_min": EFFICIENCY_MIN,
        "efficiency_by_per_node_load": at_target,
        "met": (all(value >= EFFICIENCY_MIN for value in at_target.values()) if measured else None),
    }
    return rows, target


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def run_scaleout(params: ScaleoutParams, console: Console) -> dict[str, Any]:
    started = time.monotonic()
    document: dict[str, Any] = {
        "scenario": "scaleout",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": asdict(params),
        "machine": describe_machine(),
        "definition": {
            "node": f"digits, --fault-latency-ms {params.model_ms:g} (model time), --max-concurrency 1, one thread",
            "gateway": f"one per node count, DISTINFER_NODE_MAX_IN_FLIGHT=1, strategy {params.strategy}",
            "throughput": "answered (200) requests per second through POST /inference, median over rounds",
            "ideal": "nodes x throughput of 1 node at the same per-node load",
            "efficiency": "throughput / ideal",
            "utilisation": "throughput / (nodes x 1000 / model_ms)",
        },
        "results": [],
        "errors": [],
        "warnings": [],
    }
    runs: list[dict[str, Any]] = []
    try:
        with ExitStack() as stack:
            console.print(
                f"[bold]starting[/bold] {max(params.nodes)} nodes ({params.model_ms:g} ms model time, one request "
                f"at a time) and {len(params.nodes)} gateways"
            )
            _, gateways = _start(stack, params)
            for count, gateway in gateways.items():
                _wait_serving(gateway, count)
            document["setup_s"] = round(time.monotonic() - started, 2)
            runs = asyncio.run(_measure(gateways, params, console))
    except (TimeoutError, RuntimeError, OSError, httpx.HTTPError) as exc:
        document["errors"].append(f"{type(exc).__name__}: {exc}"[:500])
    document["results"], document["target"] = summarise(runs, params)
    failed = sum(row["failed"] for row in document["results"])
    if failed:
        document["warnings"].append(f"{failed} requests failed (not 200); they count as not served")
    document["runs"] = runs
    document["machine"]["loadavg_at_end"] = load_average()
    document["wall_s"] = round(time.monotonic() - started, 2)
    return document


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_scaleout(document: dict[str, Any], console: Console) -> None:
    params = document["parameters"]
    table = Table(
        title=f"scale-out: nodes of {params['model_ms']:g} ms model time, one request at a time (medians)",
        title_justify="left",
    )
    columns = ("nodes", "c", "req/s", "ideal", "efficiency", "utilisation", "p50 ms", "p99 ms", "failed", "by node")
    for column in columns:
        table.add_column(column, justify="left" if column == "by node" else "right", no_wrap=True)
    last = None
    for row in sorted(document["results"], key=lambda r: (r["per_node"], r["nodes"])):
        if last is not None and row["per_node"] != last:
            table.add_section()
        last = row["per_node"]
        table.add_row(
            str(row["nodes"]),
            str(row["concurrency"]),
            _num(row["throughput"], 1),
            _num(row["ideal"], 1),
            _num(row["efficiency"]),
            _num(row["utilisation"]),
            _num(row["p50_ms"]),
            _num(row["p99_ms"]),
            str(row["failed"]),
            " ".join(str(count) for count in row["by_node"].values()),
        )
    console.print(table)
    target = document.get("target", {})
    verdict = {True: "met", False: "[red]not met[/red]", None: "not measured"}[target.get("met")]
    console.print(
        f"target: efficiency >= {target.get('efficiency_min')} at {target.get('nodes')} nodes "
        f"(by requests per node: {target.get('efficiency_by_per_node_load')}): {verdict}"
    )
    load = document["machine"]
    console.print(
        f"wall {document.get('wall_s')} s (setup {document.get('setup_s')} s)   load average "
        f"{load['loadavg_at_start'][0]} -> {load.get('loadavg_at_end', ['-'])[0]} on {load['nproc']} CPUs"
    )
    for line in document["errors"]:
        console.print(f"[red]error:[/red] {line}")
    for line in document["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {line}")
