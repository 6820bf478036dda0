"""`distinfer bench peer-gateway`: Ray Serve vs the distinfer gateway + nodes, at equal replicas.

Ray Serve runs from its own venv (`build/venvs/ray-serve`, made on first use): a private local
cluster of `num_cpus = replicas`, one Serve deployment of N replicas, each with its own ONNX Runtime
session (1 intra-op thread), behind Serve's HTTP proxy, taking the v2 JSON body on
`/v2/models/digits/infer` (`bench/peers/ray_app.py`). distinfer: a standalone gateway
(auth off, static discovery of N nodes) in front of N nodes (`--threads 1`, batching off: Ray has
none either), called on its v2 relay `/api/v1/distributed/v2/models/digits/infer`. Same client,
same body, same concurrency, interleaved rounds. The judged pair is JSON against JSON; the
gateway's binary extension is reported beside it. Access logs are off everywhere.
"""

from __future__ import annotations

import asyncio
import tempfile
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.peers.compare import Pair
from bench.peers.document import Judged, Recorder
from bench.peers.measure import Case, PeerParams, measure
from bench.peers.preflight import preflight, reference_logits, sample_image
from bench.peers.procs import stop_session
from bench.peers.ray_serve import RayServeConfig, start_ray_serve
from bench.peers.venvs import RAY_SERVE_ENV, VENVS_ROOT, PeerSetupError, ensure_env
from bench.scenarios.overhead import NODE_PATH, RELAY_PATH, request_bodies
from gateway_plugin.processes import ServerProcess, start_gateway, start_node
from worker.bundled import bundled_models

__all__ = ["gateway_env", "judged_pairs", "run_peer_gateway"]

MODEL = "digits"
RAY_READY_TIMEOUT_S = 150.0


def judged_pairs() -> tuple[Judged, ...]:
    return (
        Judged(Pair("distinfer-gateway", "ray-serve"), "ahead", "v2 JSON on both, batching off on both"),
        Judged(Pair("distinfer-gateway", "ray-serve", ours_encoding="binary"), None, "gateway binary vs Ray JSON"),
    )


def gateway_env(node_urls: list[str]) -> dict[str, str]:
    """The standalone gateway's environment: flag on, auth off (a loopback bench), static discovery."""
    return {
        "ENABLE_DISTRIBUTED_INFERENCE": "true",
        "DISTINFER_AUTH_DISABLED": "true",
        "DISTINFER_NODES": ",".join(node_urls),
        "DISTINFER_PROBE_INTERVAL_S": "1",
    }


def _start(
    stack: ExitStack, recorder: Recorder, config: RayServeConfig, venvs_root: Path, setup_timeout_s: float
) -> dict[str, ServerProcess]:
    env = ensure_env(RAY_SERVE_ENV, venvs_root, install_timeout_s=setup_timeout_s)
    recorder.env_ready(env)
    model_path = bundled_models() / MODEL / "model.onnx"
    temp_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dray-")))  # short: Ray's socket paths
    ray = start_ray_serve(env, model_name=MODEL, model_path=model_path, config=config, temp_dir=temp_dir)
    stack.callback(stop_session, ray)
    recorder.servers["ray-serve"] = {"url": ray.url, **asdict(config)}
    nodes: list[ServerProcess] = []
    for index in range(config.replicas):
        args = ["--models", MODEL, "--batching", "off"]
        node = start_node(bundled_models(), f"peer-node-{index + 1}", threads=config.threads, extra_args=args)
        stack.callback(node.stop)
        nodes.append(node)
        recorder.servers[f"node-{index + 1}"] = {"url": node.url, "args": args, "threads": config.threads}
    for node in nodes:
        node.wait_ready(timeout_s=60.0)
    environment = gateway_env([node.url for node in nodes])
    gateway = start_gateway(environment)
    stack.callback(gateway.stop)
    recorder.servers["distinfer-gateway"] = {"url": gateway.url, "env": environment}
    gateway.wait_ready(timeout_s=60.0)
    ray.wait_ready(timeout_s=RAY_READY_TIMEOUT_S)
    return {"ray-serve": ray, "gateway": gateway, **{f"node-{i + 1}": node for i, node in enumerate(nodes)}}


def run_peer_gateway(
    params: PeerParams,
    console: Console,
    *,
    config: RayServeConfig | None = None,
    venvs_root: Path = VENVS_ROOT,
    setup_timeout_s: float = 900.0,
) -> dict[str, Any]:
    """Make the Ray venv if needed, start Ray Serve, nodes and gateway, check answers, measure, stop everything."""
    config = config or RayServeConfig()
    recorder = Recorder("peer-gateway", params)
    bodies = request_bodies()
    cases: list[Case] = []
    runs = []
    with ExitStack() as stack:
        console.print(f"[bold]starting[/bold] Ray Serve ({config.replicas} replicas) and distinfer gateway + nodes")
        try:
            servers = _start(stack, recorder, config, venvs_root, setup_timeout_s)
        except (PeerSetupError, OSError, RuntimeError, TimeoutError) as exc:
            recorder.errors.append(f"setup: {exc}")
            servers = {}
        recorder.servers_ready()
        every: list[Case] = []
        if servers:
            ours = tuple(server.process.pid for name, server in servers.items() if name != "ray-serve")
            ray = servers["ray-serve"]
            every.append(Case("ray-serve", bodies["json"], ray.url + NODE_PATH, (ray.process.pid,)))
            for body in bodies.values():
                every.append(Case("distinfer-gateway", body, servers["gateway"].url + RELAY_PATH, ours))
        expected = reference_logits(bundled_models() / MODEL / "model.onnx", sample_image())
        cases, recorder.preflight, errors = preflight(every, expected) if every else ([], {}, [])
        recorder.errors += errors
        if cases:
            runs = asyncio.run(measure(cases, params, console))
        recorder.keep_logs_if_failed(servers, runs)
    extra = {"model": MODEL, "replicas": config.replicas, "threads": config.threads}
    extra["ray_max_ongoing_requests"] = config.max_ongoing_requests or "Serve's default (5)"
    extra["body_bytes"] = {k: len(b.data) for k, b in bodies.items()}
    return recorder.document(cases, runs, judged_pairs(), extra)
