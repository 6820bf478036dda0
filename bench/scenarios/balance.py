"""`distinfer bench balance`: every strategy against a cluster with one 10x-slower node, and a failover run.

N nodes (separate processes, `--fault-control`) behind one gateway process. A calibration run on
the healthy cluster (which also warms the gateway up) sets how slow the slow node is made: it
adds 9x the healthy p50, so a request to it takes about 10x a normal one. Then every round runs
each cell once, in an order rotated by the round: the healthy cluster with `latency` and
`round_robin` (the baseline) and the cluster with the slow node under every strategy, the slow
node's fault switched on or off before each cell. All cells send the same closed-loop schedule
(same bodies in the same order, same concurrency and duration). Each figure is the median over
rounds, so drift of a shared machine hits the baseline and the strategies alike.

One gateway serves every cell, so each cell first warms up unmeasured (`warmup_s`): a short round
robin pass, so every node's latency is freshly known on the cluster as it is now, then the cell's
own strategy, so it is measured in its steady state. Without that a cell started from whatever the
previous cell left: a just-healed node still looking 10x slow kept the "healthy" baseline on 3
nodes, and `latency` started from the slow node as round robin or least loaded had taught it.

Per cell: p50/p99, throughput and the share of requests the slow node answered. Then the slow node
is healed and a failover run kills one node (SIGKILL) mid-load: requests sent, failed (target 0)
and the time from the kill until the gateway's `/nodes` no longer shows it online. This process is
the client only.
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

import aiohttp
import httpx
from rich.console import Console

from bench.machine import describe_machine, load_average
from bench.nodeload import NodeLoadResult, run_node_load
from gateway_plugin.processes import ServerProcess, start_gateway, start_node
from worker.bundled import bundled_models

__all__ = ["BASELINE", "STRATEGIES", "BalanceParams", "Cell", "combine", "judge_balance", "run_balance", "schedule"]

STRATEGIES = ("round_robin", "least_loaded", "weighted", "capability", "latency", "model_affinity")
BASELINE = ("latency", "round_robin")  # measured on the healthy cluster too
PREFIX = "/api/v1/distributed"
P99_OVER_HEALTHY_MAX = 1.5  # latency strategy with a slow node vs the all-healthy cluster
ROUND_ROBIN_FAR_WORSE = 3.0  # round robin's p99 over the healthy p99 at least this
EJECTION_MAX_S = 1.0
_IMAGE = [[0.0, 0.0, 0.3, 0.8, 0.8, 0.1, 0.0, 0.0]] * 8


@dataclass(frozen=True, slots=True)
class BalanceParams:
    """Default: about 3 minutes; `quick`: about 40 s (one short round: a smoke test, its p99s are noise)."""

    nodes: int = 4
    concurrency: int = 8
    duration_s: float = 5.0
    rounds: int = 3
    warmup_s: float = 1.0  # per cell, unmeasured: round robin for half of it, then the cell's strategy
    slow_factor: float = 10.0
    failover_s: float = 8.0
    kill_at_s: float = 3.0
    sessions: int = 64
    quick: bool = False

    @classmethod
    def make(
        cls,
        *,
        quick: bool = False,
        nodes: int | None = None,
        concurrency: int | None = None,
        duration_s: float | None = None,
    ) -> BalanceParams:
        base = (
            cls(duration_s=2.0, rounds=1, warmup_s=0.6, failover_s=5.0, kill_at_s=2.0, quick=True) if quick else cls()
        )
        params = cls(
            nodes=nodes or base.nodes,
            concurrency=concurrency or base.concurrency,
            duration_s=duration_s or base.duration_s,
            rounds=base.rounds,
            warmup_s=base.warmup_s,
            slow_factor=base.slow_factor,
            failover_s=base.failover_s,
            kill_at_s=base.kill_at_s,
            sessions=base.sessions,
            quick=quick,
        )
        if not 2 <= params.nodes <= 16 or not 1 <= params.concurrency <= 256 or not 0 < params.duration_s <= 60:
            raise ValueError("nodes must be 2..16, concurrency 1..256 and duration 0..60 s")
        return params


def _bodies(sessions: int, strategy: str | None) -> list[bytes]:
    """One body per session id (model_affinity hashes it; the others ignore it)."""
    out = []
    for session in range(sessions):
        body: dict[str, Any] = {"model": "digits", "inputs": _IMAGE, "parameters": {"session_id": f"s{session}"}}
        if strategy is not None:
            body["strategy"] = strategy
        out.append(json.dumps(body).encode())
    return out


def _start(stack: ExitStack, params: BalanceParams) -> tuple[list[ServerProcess], ServerProcess]:
    args = ["--models", "digits", "--fault-control", "--workers", "1"]
    nodes = [start_node(bundled_models(), f"node-{i + 1}", threads=1, extra_args=args) for i in range(params.nodes)]
    for node in nodes:
        stack.callback(node.stop)
    env = {
        "ENABLE_DISTRIBUTED_INFERENCE": "true",
        "DISTINFER_NODES": ",".join(node.url for node in nodes),
        "DISTINFER_AUTH_DISABLED": "true",
        "DISTINFER_PROBE_INTERVAL_S": "0.5",
    }
    gateway = start_gateway(env)
    stack.callback(gateway.stop)
    for server in (*nodes, gateway):
        server.wait_ready(timeout_s=90.0)
    return nodes, gateway


def _set_faults(node: ServerProcess, **spec: Any) -> None:
    httpx.put(f"{node.url}/v2/faults", json=spec, timeout=10).raise_for_status()


def _wait_serving(gateway: ServerProcess, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        nodes = httpx.get(f"{gateway.url}{PREFIX}/nodes", timeout=5).json()
        if sum(node["status"] == "online" for node in nodes) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the gateway does not see {count} nodes online within {timeout_s}s")


@dataclass(frozen=True, slots=True)
class Cell:
    """One measured run: the cluster (healthy or with the slow node) and the strategy."""

    cluster: str  # "healthy" or "slow"
    strategy: str


CELLS = tuple(Cell("healthy", name) for name in BASELINE) + tuple(Cell("slow", name) for name in STRATEGIES)


def schedule(round_: int, cells: tuple[Cell, ...] = CELLS) -> tuple[Cell, ...]:
    """Every cell once, rotated by the round (as `bench overhead` rotates its targets)."""
    shift = round_ % len(cells)
    return cells[shift:] + cells[:shift]


async def _cell(url: str, params: BalanceParams, cell: Cell, slow: str | None) -> dict[str, Any]:
    """Warm up unmeasured (round robin, then the cell's strategy), then measure the cell."""
    for strategy, seconds in (("round_robin", params.warmup_s / 2), (cell.strategy, params.warmup_s)):
        await run_node_load(url, _bodies(params.sessions, strategy), concurrency=params.concurrency, duration_s=seconds)
    result = await run_node_load(
        url, _bodies(params.sessions, cell.strategy), concurrency=params.concurrency, duration_s=params.duration_s
    )
    return result.summary(slow if cell.cluster == "slow" else None)


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds for the figures, sums for the counts."""
    out: dict[str, Any] = {}
    for key in ("p50_ms", "p90_ms", "p99_ms", "throughput", "slow_share"):
        values = [run[key] for run in runs if run.get(key) is not None]
        out[key] = round(statistics.median(values), 4) if values else None
    for key in ("requests", "ok", "failed"):
        out[key] = sum(run[key] for run in runs)
    out["rounds"] = len(runs)
    return out


async def _failover(gateway: ServerProcess, victim: ServerProcess, params: BalanceParams) -> dict[str, Any]:
    url = f"{gateway.url}{PREFIX}/inference"
    load = asyncio.create_task(
        run_node_load(url, _bodies(params.sessions, None), concurrency=params.concurrency, duration_s=params.failover_s)
    )
    await asyncio.sleep(params.kill_at_s)
    killed_at = time.perf_counter()
    await asyncio.to_thread(victim.kill)
    ejected_at = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while ejected_at is None and time.perf_counter() - killed_at < params.failover_s:
            async with session.get(f"{gateway.url}{PREFIX}/nodes") as response:
                nodes = await response.json()
            if any(n["node_id"] == victim.name and n["status"] != "online" for n in nodes):
                ejected_at = time.perf_counter()
            else:
                await asyncio.sleep(0.01)
    result: NodeLoadResult = await load
    failed = [s for s in result.samples if s.status != 200]
    after_kill = [s for s in result.samples if s.started >= killed_at and s.node == victim.name and s.status == 200]
    return {
        "strategy": "latency (default)",
        "killed_node": victim.name,
        "kill_at_s": params.kill_at_s,
        "sent": len(result.samples),
        "failed": len(failed),
        "failed_statuses": sorted({s.status for s in failed}),
        "answered_by_killed_node_after_kill": len(after_kill),
        "kill_to_ejection_ms": None if ejected_at is None else round((ejected_at - killed_at) * 1000, 1),
        **{k: v for k, v in result.summary().items() if k in ("p50_ms", "p99_ms", "max_ms", "throughput")},
    }


def judge_balance(document: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals: latency p99 within 1.5x of healthy, round robin far worse, failover clean and fast.

    The ratios are of the medians over rounds; `by_round` also lists each round's own ratio (the
    slow cell's p99 over the healthy `latency` p99 of the same round), to show how much they vary.
    """
    healthy = document["healthy"]["latency"]["p99_ms"]
    slow = document["slow"]
    latency_ratio = _ratio(slow.get("latency", {}).get("p99_ms"), healthy)
    rr_ratio = _ratio(slow.get("round_robin", {}).get("p99_ms"), healthy)
    failover = document["failover"]
    ejection = failover.get("kill_to_ejection_ms")
    runs = document.get("runs", {})
    goals: dict[str, Any] = {
        "latency_p99_over_healthy": {
            "ratio": latency_ratio,
            "max": P99_OVER_HEALTHY_MAX,
            "by_round": _round_ratios(runs, "latency"),
        },
        "round_robin_p99_over_healthy": {
            "ratio": rr_ratio,
            "min": ROUND_ROBIN_FAR_WORSE,
            "by_round": _round_ratios(runs, "round_robin"),
        },
        "failover_failed": {"value": failover.get("failed"), "max": 0},
        "kill_to_ejection_ms": {"value": ejection, "max": EJECTION_MAX_S * 1000},
    }
    goals["latency_p99_over_healthy"]["met"] = latency_ratio is not None and latency_ratio <= P99_OVER_HEALTHY_MAX
    goals["round_robin_p99_over_healthy"]["met"] = rr_ratio is not None and rr_ratio >= ROUND_ROBIN_FAR_WORSE
    goals["failover_failed"]["met"] = failover.get("failed") == 0
    goals["kill_to_ejection_ms"]["met"] = ejection is not None and ejection <= EJECTION_MAX_S * 1000
    goals["all_met"] = all(goal["met"] for goal in goals.values() if isinstance(goal, dict))
    return goals


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else round(top / bottom, 3)


def _round_ratios(runs: dict[str, dict[str, list[dict[str, Any]]]], strategy: str) -> list[float | None]:
    healthy = runs.get("healthy", {}).get("latency", [])
    slow = runs.get("slow", {}).get(strategy, [])
    return [_ratio(top.get("p99_ms"), bottom.get("p99_ms")) for top, bottom in zip(slow, healthy, strict=False)]


def run_balance(params: BalanceParams, console: Console) -> dict[str, Any]:
    started = time.monotonic()
    document: dict[str, Any] = {
        "scenario": "balance",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": asdict(params),
        "machine": describe_machine(),
        "errors": [],
    }
    try:
        _run(params, console, document, started)
    except (TimeoutError, RuntimeError, httpx.HTTPError, aiohttp.ClientError) as exc:
        document["errors"].append(f"{type(exc).__name__}: {exc}"[:500])
        return document
    document["goals"] = judge_balance(document)
    document["machine"]["loadavg_at_end"] = load_average()
    document["wall_s"] = round(time.monotonic() - started, 2)
    return document


def _run(params: BalanceParams, console: Console, document: dict[str, Any], started: float) -> None:
    with ExitStack() as stack:
        console.print(f"[bold]starting[/bold] {params.nodes} nodes and a gateway")
        nodes, gateway = _start(stack, params)
        _wait_serving(gateway, params.nodes)
        document["setup_s"] = round(time.monotonic() - started, 2)
        url = f"{gateway.url}{PREFIX}/inference"
        slow_node = nodes[-1]
        # Calibration on the healthy cluster, which also warms the gateway up: how slow is 10x.
        calibration = asyncio.run(_cell(url, params, Cell("healthy", "latency"), None))
        base_p50 = calibration["p50_ms"]
        added = round((params.slow_factor - 1) * base_p50, 2)
        document["slow_node"] = {"node": slow_node.name, "added_latency_ms": added, "healthy_p50_ms": base_p50}
        console.print(
            f"[bold]{slow_node.name}[/bold] adds {added} ms when slow ({params.slow_factor:g}x the healthy p50)"
        )
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            "healthy": {name: [] for name in BASELINE},
            "slow": {name: [] for name in STRATEGIES},
        }
        for round_ in range(params.rounds):
            for cell in schedule(round_):
                slow = cell.cluster == "slow"
                _set_faults(slow_node, **({"latency_ms": added} if slow else {}))
                figures = asyncio.run(_cell(url, params, cell, slow_node.name))
                runs[cell.cluster][cell.strategy].append(figures)
                share = figures.get("slow_share")
                console.print(
                    f"[dim]{cell.cluster:<8} {round_ + 1}/{params.rounds} {cell.strategy:<15} "
                    f"p50 {figures['p50_ms']:7.2f} p99 {figures['p99_ms']:7.2f} ms {figures['throughput']:7.1f}/s "
                    f"failed {figures['failed']}"
                    + (f" slow share {share:.1%}" if share is not None else "")
                    + "[/dim]",
                    highlight=False,
                )
        document["healthy"] = {name: combine(cells) for name, cells in runs["healthy"].items()}
        document["slow"] = {name: combine(cells) for name, cells in runs["slow"].items()}
        document["runs"] = runs
        _set_faults(slow_node)
        time.sleep(1.0)
        console.print(f"[bold]failover[/bold]: killing {nodes[0].name} after {params.kill_at_s:g} s of load")
        document["failover"] = asyncio.run(_failover(gateway, nodes[0], params))
