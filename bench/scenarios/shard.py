"""`distinfer bench shard`: one model on one node against the same model cut into 2 stages on 2 nodes.

Every node runs one inference at a time on one thread (`--threads 1 --workers 1`), so "1 node"
is one core's worth of compute and 2 stages can use two. The model is a wide MLP (`bench.shard_model`)
whose compute dominates: two blocks of 32 -> 2048 -> 2048 -> 32, split by `distinfer shard` between
them (32 floats a row cross the cut: activations stay small next to the compute). Every target
is reached through the same gateway process over the v2 binary relay:

    1 node                      the whole model on one node
    2 stages relayed            stage 0, back to the gateway, stage 1
    ... micro-batches           each request cut into micro-batches that overlap across stages
    2 stages node-to-node       stage 0's node hands its activations straight to stage 1's node

Throughput is measured closed-loop at each concurrency, targets interleaved round by round; the
target is 2-stage pipelined throughput >= 1.6x one node's. Then one-row requests at concurrency 1
give the latency a hop adds: 2 stages minus 1 node.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from bench.loadgen import LoadSpec, run_load
from bench.machine import describe_machine, load_average
from bench.shard_model import write_mlp
from gateway_plugin.processes import ServerProcess, free_port, start_gateway, start_node
from worker.protocol import HEADER_LENGTH, Limits, Tensor, decode_response, encode_request
from worker.sharding.plan import NodeCapacity
from worker.sharding.planner import make_plan
from worker.sharding.source import open_source, sha256_of
from worker.sharding.split import load_graph, split_model

__all__ = ["SIZES", "ShardBenchParams", "render_shard", "run_shard"]

SIZES = (8, 2048, 2048, 8, 2048, 2048, 8)
TARGET_RATIO = 1.6
WHOLE, SHARDED = "wide", "wide2"
ONE_NODE = "1 node"


@dataclass(frozen=True, slots=True)
class ShardBenchParams:
    rounds: int = 3
    duration_s: float = 6.0
    warmup_s: float = 1.0
    concurrency: tuple[int, ...] = (1, 4)
    batch: int = 1024
    micro_batch: int = 256
    hop_requests: int = 150
    cpu_requests: int = 20
    quick: bool = False

    @classmethod
    def make(
        cls, *, quick: bool = False, duration_s: float | None = None, rounds: int | None = None
    ) -> ShardBenchParams:
        base = (
            cls(rounds=1, duration_s=3.0, warmup_s=0.5, hop_requests=60, cpu_requests=8, quick=True) if quick else cls()
        )
        params = cls(
            rounds=rounds or base.rounds,
            duration_s=duration_s or base.duration_s,
            warmup_s=base.warmup_s,
            concurrency=base.concurrency,
            batch=base.batch,
            micro_batch=base.micro_batch,
            hop_requests=base.hop_requests,
            cpu_requests=base.cpu_requests,
            quick=quick,
        )
        if not 1 <= params.rounds <= 10 or not 0 < params.duration_s <= 60:
            raise ValueError("rounds must be 1..10 and duration 0..60 s")
        return params


def _targets(micro_batch: int) -> dict[str, tuple[str, dict[str, Any]]]:
    return {
        ONE_NODE: (WHOLE, {}),
        "2 stages relayed": (SHARDED, {}),
        "2 stages relayed, micro-batches": (SHARDED, {"shard_micro_batch": micro_batch}),
        "2 stages node-to-node": (SHARDED, {"shard_forwarding": True}),
        "2 stages node-to-node, micro-batches": (SHARDED, {"shard_forwarding": True, "shard_micro_batch": micro_batch}),
    }


def _body(x: np.ndarray, parameters: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    encoded = encode_request([Tensor.of("x", x)], parameters=parameters, binary=True)
    headers = {"Content-Type": encoded.content_type, HEADER_LENGTH: str(encoded.header_length)}
    return encoded.body, headers


def _build(root: Path) -> tuple[Path, Path, dict[str, Any]]:
    """The whole model at repo/wide, its two stages beside it, and the plan's summary."""
    repo = root / "repo"
    whole = write_mlp(repo / WHOLE, sizes=SIZES, max_batch_size=1024)
    source = open_source(whole)
    nodes = [NodeCapacity(name=f"stage-{i}", memory_bytes=1024 * 1024 * 1024) for i in range(2)]
    plan = make_plan(load_graph(source), nodes, model=SHARDED, source=str(whole), sha256=sha256_of(source.weights))
    split_model(source, plan, repo)
    summary = {
        "bottleneck": plan.bottleneck,
        "stages": [
            {"ops": f"{s.first_op} .. {s.last_op}", "params_mb": round(s.param_bytes / 2**20, 2), "hands_on": s.outputs}
            for s in plan.stages
        ],
    }
    return repo, whole, summary


def _start(stack: ExitStack, repo: Path) -> dict[str, ServerProcess]:
    one = ["--threads", "1", "--workers", "1"]
    stage1_port = free_port()
    stage1_url = f"http://127.0.0.1:{stage1_port}"
    servers = {
        "whole": start_node(repo, "whole", extra_args=[*one, "--models", WHOLE]),
        "stage0": start_node(
            repo, "stage0", extra_args=[*one, "--models", f"{SHARDED}.stage0of2", "--forward-peers", stage1_url]
        ),
        "stage1": start_node(repo, "stage1", port=stage1_port, extra_args=[*one, "--models", f"{SHARDED}.stage1of2"]),
    }
    for server in servers.values():
        stack.callback(server.stop)
    env = {
        "ENABLE_DISTRIBUTED_INFERENCE": "true",
        "DISTINFER_AUTH_DISABLED": "true",
        "DISTINFER_NODES": ",".join(server.url for server in servers.values()),
        "DISTINFER_SHARDED_MODELS": str(repo),
        "DISTINFER_PROBE_INTERVAL_S": "1",
        "DISTINFER_DEFAULT_TIMEOUT_MS": "30000",
    }
    servers["gateway"] = start_gateway(env)
    stack.callback(servers["gateway"].stop)
    for server in servers.values():
        server.wait_ready(timeout_s=90.0)
    return servers


def _relay_url(gateway: ServerProcess, model: str) -> str:
    return f"{gateway.url}/api/v1/distributed/v2/models/{model}/infer"


def _preflight(
    gateway: ServerProcess, whole: Path, x: np.ndarray, micro_batch: int
) -> tuple[dict[str, Any], list[str]]:
    """Every target must answer what ONNX Runtime says the whole model answers (within 1e-5)."""
    expected = ort.InferenceSession(str(whole / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]
    report: dict[str, Any] = {}
    errors: list[str] = []
    with httpx.Client(timeout=30.0) as client:
        for name, (model, parameters) in _targets(micro_batch).items():
            body, headers = _body(x, parameters)
            deadline = time.monotonic() + 60
            response = client.post(_relay_url(gateway, model), content=body, headers=headers)
            # 404/503 while the gateway's first probes of the nodes are still on their way
            while response.status_code in (404, 503) and time.monotonic() < deadline:
                time.sleep(0.3)
                response = client.post(_relay_url(gateway, model), content=body, headers=headers)
            if response.status_code != 200:
                errors.append(f"{name}: HTTP {response.status_code} {response.text[:300]}")
                continue
            length = response.headers.get(HEADER_LENGTH)
            got = decode_response(response.content, int(length) if length else None, Limits()).outputs[0].data
            worst = float(np.max(np.abs(got - expected)))
            report[name] = {"max_abs_diff": worst, "node": response.headers.get("x-inference-node")}
            if worst > 1e-5:
                errors.append(f"{name}: answer differs from the whole model by {worst:.2e}")
    return report, errors


async def _measure(
    gateway: ServerProcess, x: np.ndarray, params: ShardBenchParams, console: Console
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    targets = list(_targets(params.micro_batch).items())
    for concurrency in params.concurrency:
        for round_ in range(params.rounds):
            shift = round_ % len(targets)
            for name, (model, parameters) in targets[shift:] + targets[:shift]:
                body, headers = _body(x, parameters)
                spec = LoadSpec(
                    url=_relay_url(gateway, model),
                    body=body,
                    headers=headers,
                    concurrency=concurrency,
                    duration_s=params.duration_s,
                    warmup_s=params.warmup_s,
                    timeout_s=30.0,
                )
                result = await run_load(spec)
                runs.append({"target": name, "concurrency": concurrency, "round": round_ + 1, **result.as_dict()})
                console.print(
                    f"[dim]c={concurrency} {round_ + 1}/{params.rounds} {name:<38} p50 {result.p50_ms:8.2f} ms "
                    f"{result.throughput:7.2f} req/s ({result.throughput * params.batch:7.1f} rows/s) "
                    f"err {result.errors + result.timeouts}[/dim]",
                    highlight=False,
                )
    return runs


async def _hops(gateway: ServerProcess, params: ShardBenchParams) -> list[dict[str, Any]]:
    """One-row requests at concurrency 1: what each extra hop costs when compute is negligible."""
    row = np.random.default_rng(1).standard_normal((1, SIZES[0])).astype(np.float32)
    names = (ONE_NODE, "2 stages relayed", "2 stages node-to-node")
    chosen = {name: target for name, target in _targets(params.micro_batch).items() if name in names}
    runs: list[dict[str, Any]] = []
    for round_ in range(params.rounds):
        for name, (model, parameters) in chosen.items():
            body, headers = _body(row, parameters)
            spec = LoadSpec(url=_relay_url(gateway, model), body=body, headers=headers, requests=params.hop_requests)
            result = await run_load(spec)
            runs.append({"target": name, "round": round_ + 1, **result.as_dict()})
    return runs


def _cpu_seconds(server: ServerProcess) -> float | None:
    """User + system CPU seconds of a server process so far (Linux /proc); None elsewhere."""
    try:
        fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _cpu_costs(
    servers: dict[str, ServerProcess], x: np.ndarray, params: ShardBenchParams
) -> dict[str, dict[str, float]]:
    """CPU milliseconds each process spends per request, target by target (requests one at a time).

    Unlike throughput, this hardly depends on what else the machine runs, so it tells what the
    targets would do with a core per node: the busiest node's CPU per request bounds throughput.
    """
    costs: dict[str, dict[str, float]] = {}
    for name, (model, parameters) in _targets(params.micro_batch).items():
        body, headers = _body(x, parameters)
        spec = LoadSpec(
            url=_relay_url(servers["gateway"], model), body=body, headers=headers, requests=params.cpu_requests
        )
        before = {key: _cpu_seconds(server) for key, server in servers.items()}
        result = await run_load(spec)
        after = {key: _cpu_seconds(server) for key, server in servers.items()}
        if result.ok:
            costs[name] = {
                key: round((after[key] - start) * 1000 / result.ok, 2)  # type: ignore[operator]
                for key, start in before.items()
                if start is not None and after[key] is not None
            }
    return costs


def _projected(costs: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Throughput with a core per node: 1000 / the busiest node's CPU ms per request, and its ratio."""
    nodes = ("whole", "stage0", "stage1")
    bound = {
        name: round(1000 / max(per[key] for key in nodes if per.get(key)), 2)
        for name, per in costs.items()
        if any(per.get(key) for key in nodes)
    }
    one = bound.get(ONE_NODE)
    return {
        "cpu_ms_per_request": costs,
        "throughput_bound": bound,
        "x_one_node": {name: round(value / one, 3) for name, value in bound.items()} if one else {},
    }


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def _summarise(runs: list[dict[str, Any]], hops: list[dict[str, Any]], params: ShardBenchParams) -> dict[str, Any]:
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for concurrency in params.concurrency:
        for name in _targets(params.micro_batch):
            mine = [r for r in runs if r["target"] == name and r["concurrency"] == concurrency]
            table.setdefault(str(concurrency), {})[name] = {
                "p50_ms": _median(mine, "p50_ms"),
                "p99_ms": _median(mine, "p99_ms"),
                "throughput": _median(mine, "throughput"),
                "errors": sum(r["errors"] + r["timeouts"] for r in mine),
            }
    best_one = max((row[ONE_NODE]["throughput"] or 0.0) for row in table.values())
    for row in table.values():
        for figures in row.values():
            figures["x_one_node"] = (
                round(figures["throughput"] / best_one, 3) if best_one and figures["throughput"] else None
            )
    sharded = {
        (c, name): figures["throughput"] or 0.0
        for c, row in table.items()
        for name, figures in row.items()
        if name != ONE_NODE
    }
    best_key = max(sharded, key=lambda key: sharded[key])
    ratio = round(sharded[best_key] / best_one, 3) if best_one else None
    hop_p50 = {
        name: _median([h for h in hops if h["target"] == name], "p50_ms") for name in {h["target"] for h in hops}
    }
    one = hop_p50.get(ONE_NODE)
    extra = {name: round(value - one, 3) for name, value in hop_p50.items() if name != ONE_NODE and value and one}
    return {
        "results": table,
        "hop_latency_p50_ms": hop_p50,
        "extra_latency_per_hop_ms": extra,
        "target": {
            "pipelined_throughput_over_one_node_min": TARGET_RATIO,
            "best": {"target": best_key[1], "concurrency": int(best_key[0]), "ratio": ratio},
            "met": ratio is not None and ratio >= TARGET_RATIO,
        },
    }


def run_shard(params: ShardBenchParams, console: Console) -> dict[str, Any]:
    started = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    machine = describe_machine()
    load_start = machine["loadavg_at_start"]
    x = np.random.default_rng(0).standard_normal((params.batch, SIZES[0])).astype(np.float32)
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="distinfer-shard-bench-")))
        repo, whole, plan = _build(root)
        console.print("[bold]starting[/bold] 1-node node, two stage nodes, gateway")
        servers = _start(stack, repo)
        preflight, errors = _preflight(servers["gateway"], whole, x, params.micro_batch)
        setup_s = time.monotonic() - started
        runs: list[dict[str, Any]] = []
        hops: list[dict[str, Any]] = []
        costs: dict[str, dict[str, float]] = {}
        if not errors:
            runs = asyncio.run(_measure(servers["gateway"], x, params, console))
            hops = asyncio.run(_hops(servers["gateway"], params))
            costs = asyncio.run(_cpu_costs(servers, x, params))
    summary = _summarise(runs, hops, params) if runs else {}
    load_end = load_average()
    return {
        "scenario": "shard",
        "started_at": started_at,
        "wall_s": round(time.monotonic() - started, 2),
        "setup_s": round(setup_s, 2),
        "machine": {**machine, "loadavg_at_end": load_end},
        "warnings": _warnings(load_start, load_end),
        "parameters": {**asdict(params), "model_sizes": list(SIZES), "rows_per_request": params.batch},
        "plan": plan,
        "preflight": preflight,
        "errors": errors,
        **summary,
        "with_a_core_per_node": _projected(costs),
        "runs": runs,
        "hop_runs": hops,
    }


def _warnings(load_start: list[float], load_end: list[float]) -> list[str]:
    cores = os.cpu_count() or 1
    busiest = max(load_start[0], load_end[0])
    if busiest <= cores:
        return []
    return [
        f"the machine was busy (1-minute load average up to {busiest} on {cores} cores): the nodes did not "
        "have their cores to themselves, and pipelining needs exactly that; rerun on an idle machine"
    ]


def render_shard(document: dict[str, Any], console: Console) -> None:
    table = Table(title="shard: medians over rounds (v2 binary relay through one gateway)", title_justify="left")
    for column in ("c", "target", "p50 ms", "p99 ms", "req/s", "x 1 node", "err"):
        table.add_column(column, justify="left" if column == "target" else "right", no_wrap=True)
    for concurrency, row in document.get("results", {}).items():
        for name, figures in row.items():
            table.add_row(
                concurrency,
                name,
                f"{figures['p50_ms']:.2f}" if figures["p50_ms"] is not None else "-",
                f"{figures['p99_ms']:.2f}" if figures["p99_ms"] is not None else "-",
                f"{figures['throughput']:.2f}" if figures["throughput"] is not None else "-",
                f"{figures['x_one_node']:.2f}" if figures["x_one_node"] is not None else "-",
                str(figures["errors"]),
            )
    console.print(table)
    for name, extra in document.get("extra_latency_per_hop_ms", {}).items():
        console.print(f"extra latency per hop, one-row requests, p50: {name}: {extra:+.3f} ms")
    target = document.get("target")
    if target:
        best = target["best"]
        verdict = "met" if target["met"] else "NOT met"
        console.print(
            f"pipelined throughput: {best['ratio']}x one node ({best['target']}, c={best['concurrency']}); "
            f"target >= {target['pipelined_throughput_over_one_node_min']}x: {verdict}"
        )
    projected = document.get("with_a_core_per_node", {})
    for name, bound in projected.get("throughput_bound", {}).items():
        cpu = projected["cpu_ms_per_request"][name]
        spent = ", ".join(f"{key} {value:.1f}" for key, value in cpu.items() if value >= 0.05)
        console.print(
            f"CPU ms per request ({spent}) -> with a core per node at most {bound:.1f} req/s, "
            f"{projected['x_one_node'].get(name, 0):.2f}x one node: {name}",
            highlight=False,
        )
    for warning in document.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for error in document.get("errors", []):
        console.print(f"[red]error:[/red] {error}")
