"""`distinfer bench overhead`: what the gateway hop costs, next to a minimal aiohttp proxy and nginx.

The same digits request (JSON and binary tensor extension) goes to one node directly, through
`bench.passthrough` (the floor for one Python hop), through nginx when installed (what any proxy
hop costs) and through the gateway's v2 relay, both as `distinfer gateway` serves it (its fast
lane, ahead of FastAPI's stack) and as `plugin`: the same gateway with `--no-fast-lane`, the
relay behind FastAPI's middleware and router as in a host app that only calls include_router.
Targets are interleaved round by round, each round in a rotated order, and each figure is the
median over rounds, so slow drift of the machine hits every target alike. All servers are
separate processes; this process is the client.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
from rich.console import Console

from bench.loadgen import LoadSpec, run_load
from bench.machine import describe_machine
from bench.params import RunParams
from bench.servers import find_nginx, nginx_version, start_nginx, start_otlp_sink, start_passthrough
from bench.summary import Run, aggregate, judge, ratios
from gateway_plugin.auth import mint_token
from gateway_plugin.processes import ServerProcess, start_gateway, start_node
from worker.bundled import bundled_models
from worker.protocol import HEADER_LENGTH, Limits, Tensor, decode_response, encode_request

__all__ = ["NODE_PATH", "RELAY_PATH", "Body", "OverheadParams", "Target", "request_bodies", "run_overhead"]

MODEL = "digits"
_SINK = "otlp-sink"
NODE_PATH = f"/v2/models/{MODEL}/infer"
RELAY_PATH = f"/api/v1/distributed/v2/models/{MODEL}/infer"
_CPU_SHARE_WARNING = 0.9


OverheadParams = RunParams


@dataclass(frozen=True, slots=True)
class Body:
    """One request body as sent to every target."""

    encoding: str
    data: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str
    pid: int | None = None  # the server process, whose CPU time per request is read around each run
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request on top of the body's (a token)


def _image() -> np.ndarray[Any, Any]:
    samples = json.loads(resources.files("gateway_plugin").joinpath("demo_digits.json").read_text("utf-8"))
    return np.asarray(samples["samples"][0]["image"], dtype=np.float32).reshape(1, 1, 8, 8)


def request_bodies() -> dict[str, Body]:
    """One 8x8 digit, shape [1,1,8,8] FP32: a v2 JSON request and its binary-extension twin."""
    tensor = Tensor.of("image", _image())
    bodies: dict[str, Body] = {}
    for encoding, binary in (("json", False), ("binary", True)):
        encoded = encode_request([tensor], binary=binary)
        headers = {"Content-Type": encoded.content_type}
        if encoded.header_length is not None:
            headers[HEADER_LENGTH] = str(encoded.header_length)
        bodies[encoding] = Body(encoding, encoded.body, headers)
    return bodies


def _start(stack: ExitStack, nginx: str | None, secret: str) -> dict[str, ServerProcess]:
    """Node first (the others point at it), then the proxies and the gateways, all started before waiting."""
    node = start_node(bundled_models(), "bench-node", threads=1)
    stack.callback(node.stop)
    servers = {"direct": node}
    servers["passthrough"] = start_passthrough(node.url)
    stack.callback(servers["passthrough"].stop)
    if nginx is not None:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="distinfer-nginx-")))
        servers["nginx"] = start_nginx(nginx, node.url, workdir)
        stack.callback(servers["nginx"].stop)
    gateway_env = {
        "ENABLE_DISTRIBUTED_INFERENCE": "true",
        "DISTINFER_NODES": node.url,
        "DISTINFER_AUTH_DISABLED": "true",
        "DISTINFER_PROBE_INTERVAL_S": "1",
    }
    servers["gateway"] = start_gateway(gateway_env)
    stack.callback(servers["gateway"].stop)
    # The same gateway without its fast lane: the relay behind FastAPI's middleware and router,
    # as in a host app that only calls include_router.
    servers["plugin"] = start_gateway(gateway_env, extra_args=["--no-fast-lane"])
    stack.callback(servers["plugin"].stop)
    # Every feature on: JWT auth (HS256, verified per request), Prometheus metrics (always on) and
    # tracing with an SDK provider exporting every span over OTLP/HTTP to a local sink.
    servers[_SINK] = start_otlp_sink()
    stack.callback(servers[_SINK].stop)
    full_env = {k: v for k, v in gateway_env.items() if k != "DISTINFER_AUTH_DISABLED"}
    full_env |= {"DISTINFER_JWT_SECRET": secret, "OTEL_EXPORTER_OTLP_ENDPOINT": servers[_SINK].url}
    servers["full"] = start_gateway(full_env | {"OTEL_SERVICE_NAME": "distinfer-bench-gateway"})
    stack.callback(servers["full"].stop)
    for server in servers.values():
        server.wait_ready(timeout_s=60.0)
    return servers


def _preflight(
    targets: list[Target], bodies: dict[str, Body], wait_s: float = 15.0
) -> tuple[list[Target], dict[str, Any], list[str]]:
    """One request per target and encoding, answers decoded and compared: a target must give the node's answer."""
    report: dict[str, Any] = {}
    errors: list[str] = []
    expected: dict[str, int] = {}
    usable: list[Target] = []
    with httpx.Client(timeout=10.0) as client:
        for target in targets:
            ok = True
            for body in bodies.values():
                deadline = time.monotonic() + wait_s
                headers = {**body.headers, **dict(target.headers)}
                response = client.post(target.url, content=body.data, headers=headers)
                while response.status_code >= 500 and time.monotonic() < deadline:  # the gateway may still probe
                    time.sleep(0.2)
                    response = client.post(target.url, content=body.data, headers=headers)
                entry: dict[str, Any] = {"status": response.status_code, "bytes": len(response.content)}
                entry["content_type"] = response.headers.get("content-type")
                if response.headers.get("x-inference-mode"):
                    entry["mode"] = response.headers["x-inference-mode"]
                report.setdefault(target.name, {})[body.encoding] = entry
                if response.status_code != 200:
                    errors.append(f"{target.name} {body.encoding}: HTTP {response.status_code} {response.text[:200]!r}")
                    ok = False
                    continue
                length = response.headers.get(HEADER_LENGTH)
                decoded = decode_response(response.content, int(length) if length else None, Limits())
                digit = int(np.argmax(decoded.outputs[0].data))
                entry["digit"] = digit
                if expected.setdefault(body.encoding, digit) != digit:
                    errors.append(f"{target.name} {body.encoding}: answered {digit}, direct {expected[body.encoding]}")
                    ok = False
            if ok:
                usable.append(target)
    return usable, report, errors


async def _measure(
    targets: list[Target], bodies: dict[str, Body], params: OverheadParams, console: Console
) -> list[Run]:
    runs: list[Run] = []
    for concurrency in params.concurrency:
        for body in bodies.values():
            for round_ in range(params.rounds):
                shift = round_ % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    spec = LoadSpec(
                        url=target.url,
                        body=body.data,
                        headers={**body.headers, **dict(target.headers)},
                        concurrency=concurrency,
                        duration_s=params.duration_s,
                        warmup_s=params.warmup_s,
                        timeout_s=params.timeout_s,
                    )
                    cpu_before = _process_cpu_s(target.pid)
                    result = await run_load(spec)
                    cpu_ms = _per_request_ms(cpu_before, _process_cpu_s(target.pid), result.requests)
                    runs.append(Run(target.name, body.encoding, concurrency, round_ + 1, result, cpu_ms))
                    console.print(
                        f"[dim]c={concurrency:<3} {body.encoding:<6} {round_ + 1}/{params.rounds} {target.name:<11} "
                        f"p50 {result.p50_ms:7.3f} p99 {result.p99_ms:7.3f} ms {result.throughput:7.1f}/s "
                        f"err {result.errors + result.timeouts} cpu {result.client_cpu_share:.0%}[/dim]",
                        highlight=False,
                    )
    return runs


def _sink_stats(url: str) -> dict[str, Any]:
    try:
        return dict(httpx.get(f"{url}/stats", timeout=5).json())
    except (httpx.HTTPError, ValueError) as exc:
        return {"error": repr(exc)}


def _process_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None when it cannot be read."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _per_request_ms(before: float | None, after: float | None, requests: int) -> float | None:
    if before is None or after is None or requests <= 0:
        return None
    return round((after - before) * 1000 / requests, 4)


def _warnings(runs: list[Run]) -> list[str]:
    notes: list[str] = []
    busy = [run for run in runs if run.result.client_cpu_share >= _CPU_SHARE_WARNING]
    if busy:
        where = sorted({f"{run.target}/{run.encoding}/c={run.concurrency}" for run in busy})
        notes.append(
            f"load generator used >= {_CPU_SHARE_WARNING:.0%} of a core in {len(busy)} runs ({', '.join(where)}): "
            "those throughputs are bounded by the client, and their ratios compressed toward 1"
        )
    failed = [run for run in runs if run.result.errors or run.result.timeouts]
    if failed:
        notes.append(f"{len(failed)} runs had errors or timeouts (see runs[])")
    return notes


def run_overhead(params: OverheadParams, console: Console) -> dict[str, Any]:
    """Start everything, check every target answers like the node, measure, stop everything."""
    started = time.monotonic()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    nginx = find_nginx()
    machine = describe_machine(aiohttp=aiohttp.__version__)
    bodies = request_bodies()
    with ExitStack() as stack:
        console.print("[bold]starting[/bold] node, pass-through" + (", nginx" if nginx else "") + ", gateway")
        secret = secrets.token_hex(32)
        servers = _start(stack, nginx, secret)
        paths = {"direct": NODE_PATH, "passthrough": NODE_PATH, "nginx": NODE_PATH, "gateway": RELAY_PATH}
        paths |= {"plugin": RELAY_PATH, "full": RELAY_PATH}
        token = (("Authorization", f"Bearer {mint_token(secret, ttl_s=3600)}"),)
        every = [
            Target(name, servers[name].url + paths[name], servers[name].process.pid, token if name == "full" else ())
            for name in paths
            if name in servers
        ]
        targets, preflight, errors = _preflight(every, bodies)
        setup_s = time.monotonic() - started
        runs = asyncio.run(_measure(targets, bodies, params, console)) if len(targets) > 1 else []
        spans = _sink_stats(servers[_SINK].url)
    measured = aggregate(runs)
    by_encoding = ratios(measured, latency_at=min(params.concurrency), throughput_at=max(params.concurrency))
    return {
        "scenario": "overhead",
        "started_at": started_at,
        "wall_s": round(time.monotonic() - started, 2),
        "setup_s": round(setup_s, 2),
        "machine": machine,
        "parameters": {**asdict(params), "model": MODEL, "body_bytes": {k: len(b.data) for k, b in bodies.items()}},
        "targets_measured": {target.name: target.url for target in targets},
        "nginx": nginx_version(nginx) if nginx else "not installed",
        "tracing_sink": spans,  # what target `full` exported (the last batch may still be buffered)
        "preflight": preflight,
        "errors": errors,
        "results": measured,
        "ratios": by_encoding,
        "targets": judge(by_encoding),
        "timeouts": {t.name: sum(run.result.timeouts for run in runs if run.target == t.name) for t in targets},
        "warnings": _warnings(runs),
        "runs": [run.as_dict() for run in runs],
    }
