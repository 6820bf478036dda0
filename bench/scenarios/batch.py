"""`distinfer bench batch`: one `POST /inference/batch` of 1,000 digits images over 1, 2 and 4 nodes.

For each node count a fresh gateway process is pointed at the first n nodes (all separate
processes, one runtime thread each); each round sends the same batch once with coalescing on and
once off, in alternating order, and each figure is the median over rounds. Throughput is images
per second of wall time for the whole batch (JSON in, JSON out, as a client sees it); efficiency
is throughput / (nodes x the single-node throughput of the same mode). Node request counters
show how many node requests each batch became.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

from bench.machine import describe_machine, load_average
from gateway_plugin.processes import ServerProcess, start_gateway, start_node
from worker.bundled import bundled_models

__all__ = ["BatchParams", "batch_body", "efficiency", "render_batch", "run_batch_bench"]

PATH = "/api/v1/distributed/inference/batch"
MODES = ("coalesce", "no_coalesce")


@dataclass(frozen=True, slots=True)
class BatchParams:
    images: int = 1000
    nodes: tuple[int, ...] = (1, 2, 4)
    rounds: int = 3
    max_concurrency: int = 32
    node_threads: int = 1
    timeout_s: float = 120.0
    quick: bool = False

    @classmethod
    def make(
        cls,
        *,
        quick: bool = False,
        images: int | None = None,
        nodes: tuple[int, ...] | None = None,
        rounds: int | None = None,
        max_concurrency: int | None = None,
    ) -> BatchParams:
        base = cls(images=200, rounds=1, quick=True) if quick else cls()
        params = cls(
            images=images or base.images,
            nodes=tuple(sorted(set(nodes or base.nodes))),
            rounds=rounds or base.rounds,
            max_concurrency=max_concurrency or base.max_concurrency,
            quick=quick,
        )
        if not 1 <= params.images <= 1024 or not 1 <= params.rounds <= 10:
            raise ValueError("images must be 1..1024 (DISTINFER_MAX_BATCH_SIZE) and rounds 1..10")
        if not params.nodes or not all(1 <= n <= 8 for n in params.nodes):
            raise ValueError("node counts must be 1..8")
        return params


def batch_body(images: int, *, coalesce: bool, max_concurrency: int, seed: int = 0) -> bytes:
    """`images` distinct digits: the demo samples with a little seeded noise, one request each."""
    samples = json.loads(resources.files("gateway_plugin").joinpath("demo_digits.json").read_text("utf-8"))
    base = np.asarray([s["image"] for s in samples["samples"]], dtype=np.float32)
    rng = np.random.default_rng(seed)
    picks = base[rng.integers(0, len(base), images)]
    noisy = np.clip(picks + rng.normal(0, 0.05, picks.shape).astype(np.float32), 0, 1).round(4)
    requests = [{"model": "digits", "inputs": image.tolist()} for image in noisy]
    body = {"requests": requests, "max_concurrency": max_concurrency, "coalesce": coalesce}
    return json.dumps(body, separators=(",", ":")).encode()


def efficiency(throughput: float | None, nodes: int, single: float | None) -> float | None:
    """throughput / (nodes x single-node throughput): 1.0 is perfect scaling."""
    if throughput is None or not single:
        return None
    return throughput / (nodes * single)


_REQUESTS = re.compile(r'^distinfer_node_requests_total\{[^}]*model="digits"[^}]*\} ([0-9.e+]+)$', re.M)


def _node_requests(nodes: list[ServerProcess]) -> int:
    total = 0.0
    for node in nodes:
        total += sum(float(v) for v in _REQUESTS.findall(httpx.get(f"{node.url}/metrics", timeout=10).text))
    return int(total)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(process: ServerProcess) -> float:
    """User + system CPU time the process has used (Linux /proc); robust where wall time is not."""
    try:
        fields = Path(f"/proc/{process.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _one_batch(client: httpx.Client, body: bytes, images: int) -> float:
    started = time.perf_counter()
    response = client.post(PATH, content=body, headers={"Content-Type": "application/json"})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    answer = response.json()
    if answer["succeeded"] != images:
        failed = [r["error"]["detail"] for r in answer["results"] if r["status"] != "ok"][:3]
        raise RuntimeError(f"{answer['failed']} of {images} items failed: {failed}")
    return elapsed


def _measure(
    params: BatchParams, nodes: list[ServerProcess], bodies: dict[str, bytes], console: Console
) -> dict[str, Any]:
    env = {
        "ENABLE_DISTRIBUTED_INFERENCE": "true",
        "DISTINFER_AUTH_DISABLED": "true",
        "DISTINFER_NODES": ",".join(node.url for node in nodes),
        "DISTINFER_MAX_INFLIGHT": "0",
        # A node busy with a whole batch on a loaded machine can miss a 1 s readiness probe; that is
        # not what this bench measures, so probes get more time here.
        "DISTINFER_PROBE_TIMEOUT_S": "5",
    }
    gateway = start_gateway(env)
    try:
        gateway.wait_ready(timeout_s=120)
        with httpx.Client(base_url=gateway.url, timeout=params.timeout_s) as client:
            _wait_nodes_online(client, len(nodes))
            for mode in MODES:  # warm-up: connections, thread pools, the nodes' batchers
                _one_batch(client, bodies[mode], params.images)
            seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
            requests: dict[str, list[int]] = {mode: [] for mode in MODES}
            gateway_cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
            nodes_cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
            for number in range(params.rounds):
                order = MODES if number % 2 == 0 else tuple(reversed(MODES))
                for mode in order:
                    before = _node_requests(nodes)
                    cpu_before = _cpu_seconds(gateway), sum(_cpu_seconds(node) for node in nodes)
                    seconds[mode].append(_one_batch(client, bodies[mode], params.images))
                    gateway_cpu[mode].append(_cpu_seconds(gateway) - cpu_before[0])
                    nodes_cpu[mode].append(sum(_cpu_seconds(node) for node in nodes) - cpu_before[1])
                    requests[mode].append(_node_requests(nodes) - before)
                console.print(
                    f"  {len(nodes)} node(s), round {number + 1}: "
                    + ", ".join(f"{m} {seconds[m][-1] * 1000:.0f} ms" for m in MODES)
                )
    finally:
        gateway.stop()
    result = {}
    for mode in MODES:
        median = statistics.median(seconds[mode])
        result[mode] = {
            "seconds": [round(s, 4) for s in seconds[mode]],
            "median_s": round(median, 4),
            "throughput_ips": round(params.images / median, 1),
            "node_requests": requests[mode],
            "gateway_cpu_ms_per_image": round(statistics.median(gateway_cpu[mode]) * 1000 / params.images, 4),
            "nodes_cpu_ms_per_image": round(statistics.median(nodes_cpu[mode]) * 1000 / params.images, 4),
        }
    return result


def _wait_nodes_online(client: httpx.Client, count: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        nodes = client.get("/api/v1/distributed/nodes").json()
        if isinstance(nodes, list) and sum(1 for n in nodes if n.get("status") == "online") >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the gateway did not see {count} nodes online")


def run_batch_bench(params: BatchParams, console: Console) -> dict[str, Any]:
    wall = time.perf_counter()
    machine = describe_machine()  # its load average: before the run
    errors: list[str] = []
    bodies = {
        mode: batch_body(params.images, coalesce=mode == "coalesce", max_concurrency=params.max_concurrency)
        for mode in MODES
    }
    by_nodes: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        started = [
            start_node(bundled_models(), f"bench-{i}", threads=params.node_threads) for i in range(max(params.nodes))
        ]
        for node in started:
            stack.callback(node.stop)
        for node in started:
            node.wait_ready(timeout_s=120)
        for used in params.nodes:
            console.print(f"measuring {used} node(s)...")
            try:
                by_nodes[str(used)] = _measure(params, started[:used], bodies, console)
            except Exception as exc:  # one configuration failing must not hide the others
                errors.append(f"{used} node(s): {type(exc).__name__}: {exc}")
    single = {mode: by_nodes.get("1", {}).get(mode, {}).get("throughput_ips") for mode in MODES}
    for label, modes in by_nodes.items():
        for mode, figures in modes.items():
            value = efficiency(figures["throughput_ips"], int(label), single[mode])
            figures["efficiency"] = None if value is None else round(value, 3)
    return {
        "scenario": "batch",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": asdict(params),
        "machine": {**machine, "loadavg_at_end": load_average()},  # others' work shows in the load
        "definition": {
            "throughput_ips": "images / wall seconds of one POST /inference/batch (median over rounds)",
            "efficiency": "throughput / (nodes x single-node throughput, same mode)",
            "node_requests": "inference requests the nodes received for that batch",
            "cpu_ms_per_image": "CPU time (user + system, /proc, 10 ms ticks) the gateway / all nodes spent per image",
        },
        "results": by_nodes,
        "coalescing_speedup": {
            label: round(modes["coalesce"]["throughput_ips"] / modes["no_coalesce"]["throughput_ips"], 2)
            for label, modes in by_nodes.items()
        },
        "errors": errors,
        "wall_s": round(time.perf_counter() - wall, 1),
    }


def render_batch(document: dict[str, Any], console: Console) -> None:
    table = Table(title=f"batch of {document['params']['images']} digits images (medians)", title_justify="left")
    columns = ("nodes", "mode", "median ms", "images/s", "efficiency", "node requests", "gw cpu ms/img", "nodes cpu")
    for column in columns:
        table.add_column(column, justify="left" if column == "mode" else "right", no_wrap=True)
    for count, modes in document["results"].items():
        for mode, figures in modes.items():
            eff = figures.get("efficiency")
            table.add_row(
                count,
                mode,
                f"{figures['median_s'] * 1000:.0f}",
                f"{figures['throughput_ips']:.0f}",
                "-" if eff is None else f"{eff:.2f}",
                str(figures["node_requests"][-1]),
                f"{figures['gateway_cpu_ms_per_image']:.3f}",
                f"{figures['nodes_cpu_ms_per_image']:.3f}",
            )
        table.add_section()
    console.print(table)
    load = [document["machine"]["loadavg_at_start"][0], document["machine"]["loadavg_at_end"][0]]
    console.print(
        f"coalescing speed-up by node count: {document['coalescing_speedup']}   wall {document['wall_s']} s"
        f"   load average {load[0]} -> {load[1]} on {document['machine']['nproc']} CPUs"
    )
    for line in document["errors"]:
        console.print(f"[red]error:[/red] {line}")
