"""`distinfer bench batching`: one node with dynamic batching against the same node without, per model.

For each model (`digits`, bundled, and the larger all-MiniLM-L6-v2 when `scripts/export_minilm.py`
has exported it) two node processes serve the same model repository, `--models <model>` only, one
`--batching on` and one `--batching off`, with the same threads and workers. Closed-loop load goes
directly at each node (one binary v2 request per call: one 8x8 digit, or one 32-token sentence)
at each concurrency; on and off are interleaved round by round in a rotated order so drift of the
machine hits both alike, and every figure is the median over rounds. This process is the client.

Besides throughput and latency, each measured run reads the node process's CPU time
(utime + stime from /proc/<pid>/stat) and its /metrics (runtime calls and rows) before and after.
After a model's nodes stop, this process times the model itself (same runtime, same threads) at
batch 1 and at the batch size the batching node made, which gives per answered request:

    node CPU   = node CPU seconds / answered requests
    model CPU  = CPU of one runtime call at the node's batch size / its rows (calibrated here)
    other      = node CPU - model CPU: HTTP, the framework, (de)serialising, batching, thread hand-offs
    node cores = node CPU seconds / wall seconds, so throughput = node cores / node CPU per request

and the ratio on / off of throughput, which splits into (CPU per request off / on) x (cores on / off):
exactly within one run, about so for the medians over rounds. Target (issue 8): batching >= 3x
unbatched for digits at concurrency 64.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from bench.loadgen import LoadSpec, run_load
from bench.machine import describe_machine, load_average
from bench.scenarios import minilm
from bench.scenarios.overhead import request_bodies
from gateway_plugin.processes import ServerProcess, start_node
from worker.bundled import bundled_models
from worker.protocol import HEADER_LENGTH, Limits, decode_request, decode_response
from worker.repository import read_config
from worker.runtimes import open_runtime

__all__ = [
    "MODELS",
    "MODES",
    "RATIO_MIN",
    "TARGET_CONCURRENCY",
    "TARGET_MODEL",
    "BatchingParams",
    "batch_size",
    "model_cpu_per_row",
    "node_cpu_seconds",
    "render_batching",
    "run_batching",
    "summarise",
]

MODELS = ("digits", "minilm")
MODES = ("on", "off")  # --batching on | off
TARGET_MODEL = "digits"
TARGET_CONCURRENCY = 64
RATIO_MIN = 3.0
CLIENT_CPU_WARNING = 0.9  # client CPU seconds per wall second: near a full core, it caps what it can measure
MACHINE_BUSY_WARNING = 0.9  # share of all CPUs busy (any process) during a run: the node could get no more
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class BatchingParams:
    """Default about 70 s for both models (3 rounds of 2 s); `quick` about 25 s (one round of 1 s)."""

    models: tuple[str, ...] = MODELS
    concurrency: tuple[int, ...] = (1, TARGET_CONCURRENCY)
    rounds: int = 3
    duration_s: float = 2.0
    warmup_s: float = 0.5
    # Same for both nodes, so --batching is the only difference. One runtime thread per call: the 2
    # cores are shared by the node and this client, and intra-op threads on a batch-1 call of a model
    # this small only add synchronisation (bench overhead and minilm use 1 too, so figures compare).
    # Two workers (the node's default): the unbatched node can overlap two model calls with its
    # event loop, its best case on 2 cores, and the batched one keeps two batches in flight
    # (max_concurrent_batches = workers).
    threads: int = 1
    workers: int = 2
    timeout_s: float = 10.0
    minilm_repository: Path = minilm.MINILM_REPOSITORY
    quick: bool = False

    @classmethod
    def make(
        cls,
        *,
        quick: bool = False,
        models: tuple[str, ...] | None = None,
        concurrency: tuple[int, ...] | None = None,
        duration_s: float | None = None,
        rounds: int | None = None,
        minilm_repository: Path | None = None,
    ) -> BatchingParams:
        base = cls(rounds=1, duration_s=1.0, warmup_s=0.3, quick=True) if quick else cls()
        params = cls(
            models=tuple(dict.fromkeys(models or base.models)),
            concurrency=tuple(sorted(set(concurrency or base.concurrency))),
            rounds=rounds or base.rounds,
            duration_s=duration_s or base.duration_s,
            warmup_s=base.warmup_s,
            minilm_repository=minilm_repository or base.minilm_repository,
            quick=quick,
        )
        if not params.models or not set(params.models) <= set(MODELS):
            raise ValueError(f"models must be some of {', '.join(MODELS)}")
        if not params.concurrency or not all(1 <= c <= 512 for c in params.concurrency):
            raise ValueError("concurrency levels must be 1..512")
        if not 1 <= params.rounds <= 10 or not 0 < params.duration_s <= 60:
            raise ValueError("rounds must be 1..10 and duration in (0, 60] s")
        return params


@dataclass(frozen=True, slots=True)
class Workload:
    """What one model's nodes serve and what each request sends them."""

    model: str
    repository: Path
    path: str
    body: bytes
    headers: dict[str, str]


def _workload(model: str, params: BatchingParams) -> Workload | str:
    """The model's repository and request, or why it cannot be measured (then it is skipped)."""
    if model == "digits":
        body = request_bodies()["binary"]
        return Workload(model, bundled_models(), "/v2/models/digits/infer", body.data, body.headers)
    if (reason := minilm.missing_export(params.minilm_repository)) is not None:
        return reason
    data, headers = minilm.request_body(params.minilm_repository)
    return Workload(model, params.minilm_repository, minilm.NODE_PATH, data, headers)


def node_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (fields 14 and 15 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy (not idle, not waiting for I/O), from /proc/stat."""
    fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLOCK_TICKS


def _model_counters(client: httpx.Client, node: ServerProcess, model: str) -> dict[str, float]:
    """The node's cumulative runtime calls and rows for `model`, from its /metrics.

    (Its runtime-seconds histogram is not used: unbatched, it includes the wait for a worker thread.)
    """
    wanted = {
        "distinfer_node_inference_duration_seconds_count": "node_runtime_calls",
        "distinfer_node_batch_rows_sum": "node_rows",
    }
    counters = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(client.get(f"{node.url}/metrics").text):
        for sample in family.samples:
            if sample.name in wanted and sample.labels.get("model") == model:
                counters[wanted[sample.name]] = float(sample.value)
    return counters


def _snapshot(client: httpx.Client, node: ServerProcess, model: str, *, cpu_first: bool) -> dict[str, float]:
    """Counters and CPU times, read so that the /metrics scrape itself falls outside the measured CPU window."""
    if cpu_first:
        cpu = {"node_cpu_s": node_cpu_seconds(node.process.pid), "machine_busy_s": machine_busy_seconds()}
        return {**cpu, **_model_counters(client, node, model)}
    counters = _model_counters(client, node, model)
    return {**counters, "node_cpu_s": node_cpu_seconds(node.process.pid), "machine_busy_s": machine_busy_seconds()}


def _start_pair(stack: ExitStack, workload: Workload, params: BatchingParams) -> dict[str, ServerProcess]:
    nodes: dict[str, ServerProcess] = {}
    for mode in MODES:
        args = ["--models", workload.model, "--workers", str(params.workers), "--batching", mode]
        nodes[mode] = start_node(
            workload.repository, f"{workload.model}-batching-{mode}", threads=params.threads, extra_args=args
        )
        stack.callback(nodes[mode].stop)
    for node in nodes.values():  # both started before either is waited for
        node.wait_ready(timeout_s=90.0)
    return nodes


def _preflight(nodes: dict[str, ServerProcess], workload: Workload) -> list[str]:
    """Each node answers 200 and both give the same outputs: on and off serve the same model."""
    errors: list[str] = []
    answers: dict[str, list[np.ndarray[Any, Any]]] = {}
    with httpx.Client(timeout=30.0) as client:
        for mode, node in nodes.items():
            response = client.post(node.url + workload.path, content=workload.body, headers=workload.headers)
            if response.status_code != 200:
                errors.append(f"{workload.model} batching {mode}: HTTP {response.status_code} {response.text[:200]!r}")
                continue
            length = response.headers.get(HEADER_LENGTH)
            decoded = decode_response(response.content, int(length) if length else None, Limits())
            answers[mode] = [tensor.data for tensor in decoded.outputs]
    if len(answers) == len(MODES):
        on, off = answers["on"], answers["off"]
        if len(on) != len(off) or not all(
            np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(on, off, strict=True)
        ):
            errors.append(f"{workload.model}: batching on and off answered differently")
    return errors


def _measure(
    nodes: dict[str, ServerProcess], workload: Workload, params: BatchingParams, console: Console
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    with httpx.Client(timeout=10.0) as client:
        for concurrency in params.concurrency:
            for round_ in range(params.rounds):
                shift = round_ % len(MODES)
                for mode in MODES[shift:] + MODES[:shift]:
                    node = nodes[mode]
                    spec = LoadSpec(
                        url=node.url + workload.path,
                        body=workload.body,
                        headers=workload.headers,
                        concurrency=concurrency,
                        duration_s=params.duration_s,
                        timeout_s=params.timeout_s,
                    )
                    if params.warmup_s > 0:  # its own run, so the node's counters below cover the measured one only
                        asyncio.run(run_load(replace(spec, duration_s=params.warmup_s)))
                    before = _snapshot(client, node, workload.model, cpu_first=False)
                    result = asyncio.run(run_load(spec))
                    after = _snapshot(client, node, workload.model, cpu_first=True)
                    run = {
                        "model": workload.model,
                        "mode": mode,
                        "concurrency": concurrency,
                        "round": round_ + 1,
                        **result.as_dict(),
                        **{key: round(after[key] - before[key], 6) for key in before},
                    }
                    run.update(_derived(run))
                    runs.append(run)
                    console.print(
                        f"[dim]{workload.model:<7} c={concurrency:<3} {round_ + 1}/{params.rounds} batching {mode:<3} "
                        f"{result.throughput:8.1f}/s p50 {result.p50_ms:7.3f} p99 {result.p99_ms:7.3f} ms "
                        f"node {_num(run['node_cpu_us_per_request'], 0)} us/req "
                        f"rows/call {_num(run['rows_per_call'], 1)} client cpu {result.client_cpu_share:.0%}[/dim]",
                        highlight=False,
                    )
    return runs


def model_cpu_per_row(
    workload: Workload, threads: int, batch_sizes: Iterable[int], budget_s: float = 0.25
) -> dict[str, float]:
    """CPU microseconds per row of one runtime call of the model at each batch size, timed in this process.

    The node's own runtime, as it opens it (same threads), on the request's rows repeated to the batch
    size; at least two calls per size after a warm-up one, then calls until `budget_s` of CPU.
    """
    folder = workload.repository / workload.model
    runtime = open_runtime(read_config(folder), folder, threads=threads)
    length = workload.headers.get(HEADER_LENGTH)
    request = decode_request(workload.body, int(length) if length else None, Limits())
    rows = {tensor.name: tensor.data for tensor in request.inputs}
    costs: dict[str, float] = {}
    try:
        for size in sorted(set(batch_sizes)):
            feeds = {name: np.repeat(array, size, axis=0) for name, array in rows.items()}
            runtime.run(feeds)
            calls, start = 0, time.process_time()
            while calls < 2 or (time.process_time() - start < budget_s and calls < 100_000):
                runtime.run(feeds)
                calls += 1
            costs[str(size)] = round((time.process_time() - start) / (calls * size) * 1e6, 2)
    finally:
        runtime.close()
    return costs


def _per(value: float | None, count: float | None, scale: float = 1.0) -> float | None:
    if value is None or not count:
        return None
    return value / count * scale


def _derived(run: dict[str, Any]) -> dict[str, float | None]:
    """Per-run figures from the raw counts: per answered request, per runtime call, per wall second."""
    return {
        "node_cpu_us_per_request": _round(_per(run.get("node_cpu_s"), run.get("ok") or 0, 1e6), 2),
        "node_cores": _round(_per(run.get("node_cpu_s"), run.get("elapsed_s")), 4),
        "machine_cores": _round(_per(run.get("machine_busy_s"), run.get("elapsed_s")), 4),
        "rows_per_call": _round(_per(run.get("node_rows"), run.get("node_runtime_calls")), 3),
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _median(values: Iterable[float | int | None]) -> float | None:
    present = [float(value) for value in values if value is not None]
    return statistics.median(present) if present else None


def _ratio(top: float | None, bottom: float | None, digits: int = 3) -> float | None:
    return None if top is None or bottom is None or bottom <= 0 else round(top / bottom, digits)


_MEDIANS = {
    "throughput": 2,
    "p50_ms": 3,
    "p99_ms": 3,
    "node_cpu_us_per_request": 1,
    "node_cores": 3,
    "machine_cores": 3,
    "rows_per_call": 2,
    "client_cpu_share": 3,
}
_SUMS = ("requests", "ok", "errors", "timeouts")


def batch_size(figures: dict[str, Any]) -> int:
    """The batch size a row's model cost is taken at: its median rows per runtime call, rounded (1 if unknown)."""
    rows = figures.get("rows_per_call")
    return max(1, round(rows)) if rows else 1


def summarise(
    runs: list[dict[str, Any]],
    params: BatchingParams,
    model_cost: dict[str, dict[str, float]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Medians per model, concurrency and mode; the on/off ratios from those medians; the target's verdict.

    Every run needs the load figures (throughput, p50_ms, p99_ms, client_cpu_share, requests, ok,
    errors, timeouts, elapsed_s) and the node's deltas (node_cpu_s, node_runtime_calls, node_rows);
    per-request figures are derived here when missing. `model_cost` is {model: {batch size: model CPU
    microseconds per row}} (model_cpu_per_row); without it the model/other split is left out (None).
    """
    results: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for model in params.models:
        costs = (model_cost or {}).get(model, {})
        for concurrency in params.concurrency:
            by_mode: dict[str, dict[str, Any]] = {}
            for mode in MODES:
                mine = [
                    {**_derived(run), **run}
                    for run in runs
                    if (run["model"], run["concurrency"], run["mode"]) == (model, concurrency, mode)
                ]
                if not mine:
                    continue
                figures: dict[str, Any] = {
                    key: _round(_median(run.get(key) for run in mine), digits) for key, digits in _MEDIANS.items()
                }
                figures |= {key: sum(int(run.get(key) or 0) for run in mine) for key in _SUMS}
                figures["rounds"] = len(mine)
                figures["model_batch"] = batch_size(figures)
                model_us = costs.get(str(figures["model_batch"]))
                cpu_us = figures["node_cpu_us_per_request"]
                figures["model_us_per_request"] = model_us
                figures["other_us_per_request"] = (
                    None if model_us is None or cpu_us is None else round(cpu_us - model_us, 1)
                )
                by_mode[mode] = figures
            if not by_mode:
                continue
            results.setdefault(model, {})[str(concurrency)] = by_mode
            ratios.setdefault(model, {})[str(concurrency)] = _ratios(by_mode.get("on", {}), by_mode.get("off", {}))
    return results, ratios, _target(results, ratios)


def _ratios(on: dict[str, Any], off: dict[str, Any]) -> dict[str, float | None]:
    """On over off, from the medians; throughput = cores / CPU per request, so the first ~ the next two's product."""
    cpu_off, other_off = off.get("node_cpu_us_per_request"), off.get("other_us_per_request")
    return {
        "throughput_on_over_off": _ratio(on.get("throughput"), off.get("throughput")),
        "node_cpu_per_request_off_over_on": _ratio(cpu_off, on.get("node_cpu_us_per_request")),
        "node_cores_on_over_off": _ratio(on.get("node_cores"), off.get("node_cores")),
        "model_share_of_node_cpu_off": _ratio(off.get("model_us_per_request"), cpu_off),
        "model_share_of_node_cpu_on": _ratio(on.get("model_us_per_request"), on.get("node_cpu_us_per_request")),
        # CPU per request off over its non-model part: the gain per request if batching only made the
        # model call free and changed nothing else (a measured gain above it was saved outside the model).
        "cpu_gain_if_model_free": _ratio(cpu_off, other_off) if other_off and other_off > 0 else None,
    }


def _target(results: dict[str, Any], ratios: dict[str, Any]) -> dict[str, Any]:
    """The verdict, and what it would take: at equal node cores, 3x needs a third of the unbatched CPU per request."""
    key = str(TARGET_CONCURRENCY)
    ratio = ratios.get(TARGET_MODEL, {}).get(key, {}).get("throughput_on_over_off")
    verdict = "not measured" if ratio is None else ("met" if ratio >= RATIO_MIN else "not met")
    by_mode = results.get(TARGET_MODEL, {}).get(key, {})
    cpu_off = by_mode.get("off", {}).get("node_cpu_us_per_request")
    return {
        "model": TARGET_MODEL,
        "concurrency": TARGET_CONCURRENCY,
        "ratio_min": RATIO_MIN,
        "ratio": ratio,
        "verdict": verdict,
        "met": None if ratio is None else ratio >= RATIO_MIN,
        "node_cpu_us_per_request_on_needed_at_equal_cores": _round(None if cpu_off is None else cpu_off / RATIO_MIN, 1),
        "node_cpu_us_per_request_on": by_mode.get("on", {}).get("node_cpu_us_per_request"),
        "other_us_per_request_on": by_mode.get("on", {}).get("other_us_per_request"),
    }


def _warnings(runs: list[dict[str, Any]], usable_cpus: int) -> list[str]:
    notes: list[str] = []
    busy = [run for run in runs if (run.get("client_cpu_share") or 0) >= CLIENT_CPU_WARNING]
    if busy:
        where = sorted({f"{run['model']}/batching-{run['mode']}/c={run['concurrency']}" for run in busy})
        notes.append(
            f"the client used >= {CLIENT_CPU_WARNING:.0%} of a core in {len(busy)} runs ({', '.join(where)}): "
            "those throughputs are bounded by the load generator, and their on/off ratio compressed toward 1"
        )
    full = [run for run in runs if (run.get("machine_cores") or 0) >= MACHINE_BUSY_WARNING * usable_cpus]
    if full:
        where = sorted({f"{run['model']}/batching-{run['mode']}/c={run['concurrency']}" for run in full})
        others = _median(
            (run.get("machine_cores") or 0) - (run.get("node_cores") or 0) - (run.get("client_cpu_share") or 0)
            for run in full
        )
        notes.append(
            f"the machine's {usable_cpus} CPUs were >= {MACHINE_BUSY_WARNING:.0%} busy in {len(full)} runs "
            f"({', '.join(where)}; other processes than node and client: median {_num(others)} cores): "
            "there the node got only the CPU left to it, and throughputs are lower than on a quiet machine"
        )
    for run in runs:
        if run["mode"] == "on" and run["concurrency"] > 1 and (run.get("rows_per_call") or 0) < 1.5:
            notes.append(
                f"{run['model']} c={run['concurrency']} round {run['round']}: batching on made batches of "
                f"{run.get('rows_per_call')} rows a call on average: little to amortise"
            )
    failed = [run for run in runs if run.get("errors") or run.get("timeouts")]
    if failed:
        notes.append(f"{len(failed)} runs had errors or timeouts (see runs[])")
    return notes


def _calibrate(workload: Workload, runs: list[dict[str, Any]], params: BatchingParams) -> tuple[dict[str, float], str]:
    """The model's CPU per row at batch 1 and at every batch size its batching node made (see summarise)."""
    mine = [run for run in runs if run["model"] == workload.model]
    results = summarise(mine, replace(params, models=(workload.model,)))[0].get(workload.model, {})
    sizes = {1} | {batch_size(by_mode["on"]) for by_mode in results.values() if "on" in by_mode}
    try:
        return model_cpu_per_row(workload, params.threads, sizes), ""
    except Exception as exc:  # the runtime's own errors: the split is left out, the measurement stands
        return {}, f"{workload.model}: could not time the model alone ({type(exc).__name__}: {exc})"[:500]


def run_batching(params: BatchingParams, console: Console) -> dict[str, Any]:
    """Per model: start its two nodes, check they answer alike, measure in interleaved rounds, stop them."""
    started = time.monotonic()
    document: dict[str, Any] = {
        "scenario": "batching",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": {**asdict(params), "minilm_repository": str(params.minilm_repository)},
        "machine": describe_machine(),
        "definition": {
            "nodes": f"two per model, --models <model> --threads {params.threads} --workers {params.workers}, "
            "one --batching on and one --batching off; load directly at each node, binary v2, one row a request",
            "throughput": "answered (200) requests per second, median over rounds",
            "node_cpu_us_per_request": "node process utime+stime (/proc/<pid>/stat) / answered requests, microseconds",
            "model_us_per_request": "CPU of one runtime call at batch size model_batch / its rows, microseconds, "
            "timed by the bench process after the nodes stopped (same runtime and threads; "
            "models[].model_cpu_us_per_row)",
            "other_us_per_request": "node CPU - model CPU per request: HTTP, framework, codec, batching, "
            "thread hand-offs",
            "node_cores": "node CPU seconds / wall seconds",
            "machine_cores": "busy CPU seconds of the whole machine (/proc/stat, every process) / wall seconds",
            "rows_per_call": "rows per runtime call, node /metrics (1 unbatched; the batch size with batching on)",
            "ratio": "throughput on / throughput off, from the medians in results",
        },
        "models": {},
        "skipped": {},
        "results": {},
        "ratios": {},
        "errors": [],
        "warnings": [],
    }
    runs: list[dict[str, Any]] = []
    costs: dict[str, dict[str, float]] = {}
    for model in params.models:
        workload = _workload(model, params)
        if isinstance(workload, str):
            document["skipped"][model] = workload
            document["models"][model] = {"status": "skipped", "reason": workload}
            console.print(f"[yellow]skipping {model}:[/yellow] {workload}")
            continue
        entry: dict[str, Any] = {"repository": str(workload.repository), "body_bytes": len(workload.body)}
        document["models"][model] = entry
        model_started = time.monotonic()
        try:
            with ExitStack() as stack:
                console.print(f"[bold]starting[/bold] two {model} nodes, batching on and off")
                nodes = _start_pair(stack, workload, params)
                errors = _preflight(nodes, workload)
                entry["setup_s"] = round(time.monotonic() - model_started, 2)
                document["errors"].extend(errors)
                entry["status"] = "failed" if errors else "measured"
                if not errors:
                    runs.extend(_measure(nodes, workload, params, console))
        except (TimeoutError, RuntimeError, OSError, httpx.HTTPError) as exc:
            document["errors"].append(f"{model}: {type(exc).__name__}: {exc}"[:500])
            entry["status"] = "failed"
        if entry["status"] == "measured":  # the nodes are stopped: the model is timed on a quiet machine
            costs[model], note = _calibrate(workload, runs, params)
            entry["model_cpu_us_per_row"] = costs[model]
            if note:
                document["warnings"].append(note)
        entry["wall_s"] = round(time.monotonic() - model_started, 2)
    document["results"], document["ratios"], document["target"] = summarise(runs, params, costs)
    document["warnings"] += _warnings(runs, int(document["machine"]["usable_cpus"] or 1))
    document["warnings"] += [f"{model} skipped: {reason}" for model, reason in document["skipped"].items()]
    document["runs"] = runs
    document["machine"]["loadavg_at_end"] = load_average()
    document["wall_s"] = round(time.monotonic() - started, 2)
    return document


def _num(value: Any, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def render_batching(document: dict[str, Any], console: Console) -> None:
    table = Table(
        title="dynamic batching on vs off, direct to one node (medians over rounds)",
        title_justify="left",
        caption="per request, us: node CPU, model CPU at the node's batch size, other = CPU - model; "
        "cores = node CPU / wall; rows = rows per runtime call; client = load generator CPU share; "
        "busy = busy CPUs of the whole machine",
        caption_justify="left",
    )
    columns = ["model", "c", "batch", "req/s", "p50 ms", "p99 ms", "CPU", "model", "other", "cores", "rows", "client"]
    columns.append("busy")
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index in (0, 2) else "right", no_wrap=True)
    for model, by_concurrency in document["results"].items():
        for concurrency, by_mode in by_concurrency.items():
            for mode, row in by_mode.items():
                share = row["client_cpu_share"]
                table.add_row(
                    model,
                    concurrency,
                    mode,
                    _num(row["throughput"], 1),
                    _num(row["p50_ms"]),
                    _num(row["p99_ms"]),
                    _num(row["node_cpu_us_per_request"], 0),
                    _num(row["model_us_per_request"], 0),
                    _num(row["other_us_per_request"], 0),
                    _num(row["node_cores"]),
                    _num(row["rows_per_call"], 1),
                    _num(None if share is None else share * 100, 0, "%"),
                    _num(row["machine_cores"]),
                )
            table.add_section()
    console.print(table)
    for model, by_concurrency in document["ratios"].items():
        for concurrency, ratio in by_concurrency.items():
            console.print(
                f"{model} c={concurrency}: throughput on/off {_num(ratio['throughput_on_over_off'])}x ~ "
                f"node CPU per request off/on {_num(ratio['node_cpu_per_request_off_over_on'])}x "
                f"x node cores on/off {_num(ratio['node_cores_on_over_off'])}; model share of node CPU "
                f"off {_num(ratio['model_share_of_node_cpu_off'])}, on {_num(ratio['model_share_of_node_cpu_on'])}; "
                f"CPU gain if only the model were free {_num(ratio['cpu_gain_if_model_free'])}x",
                highlight=False,
            )
    target = document["target"]
    verdict = {"met": "met", "not met": "[red]not met[/red]"}.get(target["verdict"], target["verdict"])
    console.print(
        f"target: batching >= {target['ratio_min']:g}x unbatched for {target['model']} at c={target['concurrency']}: "
        f"{verdict} ({_num(target['ratio'])}x); at equal node cores that needs <= "
        f"{_num(target['node_cpu_us_per_request_on_needed_at_equal_cores'], 0)} us of node CPU per request, "
        f"batched it took {_num(target['node_cpu_us_per_request_on'], 0)} "
        f"(of which {_num(target['other_us_per_request_on'], 0)} outside the model)"
    )
    load = document["machine"]
    console.print(
        f"wall {document.get('wall_s')} s   load average {load['loadavg_at_start'][0]} -> "
        f"{load.get('loadavg_at_end', ['-'])[0]} on {load['nproc']} CPUs"
    )
    for line in document["errors"]:
        console.print(f"[red]error:[/red] {line}")
    for line in document["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {line}")
