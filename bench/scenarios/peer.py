"""`distinfer bench peer`: the digits classifier served by MLServer vs by a distinfer node, over v2.

MLServer runs from its own venv (`build/venvs/mlserver`, made on first use) with a small ONNX
Runtime runtime (`bench/peers/mlserver_runtime.py`); the node is `distinfer node --models digits
--threads 1`. Both get 1 ONNX Runtime intra-op thread and the same v2 JSON body from the same load
generator, at the same concurrency, in interleaved rounds. MLServer speaks no binary tensor
extension, so the comparison is JSON against JSON; the node's binary figure is reported beside it.

Batching, for fairness: MLServer's adaptive batching is off by default and so is the node's for
digits (its config.json has no `dynamic_batching`). The judged pairs: both off, against MLServer's
default single inference worker process and against `parallel_workers: 0` (inference in the HTTP
process, MLServer's fastest at concurrency 1); and both on with the same knobs (at most 256 rows,
2 ms wait: the node's defaults).
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
from bench.peers.mlserver import MLServerVariant, start_mlserver
from bench.peers.preflight import preflight, reference_logits, sample_image
from bench.peers.procs import stop_session
from bench.peers.venvs import MLSERVER_ENV, VENVS_ROOT, PeerSetupError, ensure_env
from bench.scenarios.overhead import NODE_PATH, request_bodies
from gateway_plugin.processes import ServerProcess, start_node
from worker.bundled import bundled_models

__all__ = ["MLSERVER_VARIANTS", "NODE_VARIANTS", "judged_pairs", "run_peer"]

MODEL = "digits"
THREADS = 1
MLSERVER_VARIANTS = (
    MLServerVariant("mlserver"),
    MLServerVariant("mlserver-inproc", parallel_workers=0),
    MLServerVariant("mlserver-batching", max_batch_size=256, max_batch_time_s=0.002),
)
NODE_VARIANTS = {"distinfer": "off", "distinfer-batching": "on"}


def judged_pairs() -> tuple[Judged, ...]:
    """Batching off on both (the judged target), both on, and the node's binary extension for information."""
    return (
        Judged(Pair("distinfer", "mlserver"), "as_fast", "batching off on both (both servers' default for digits)"),
        Judged(Pair("distinfer", "mlserver-inproc"), "as_fast", "batching off; MLServer inferring in its HTTP process"),
        Judged(Pair("distinfer-batching", "mlserver-batching"), "as_fast", "batching on, 256 rows / 2 ms on both"),
        Judged(Pair("distinfer", "mlserver", ours_encoding="binary"), None, "node binary extension vs MLServer JSON"),
    )


def _start(stack: ExitStack, recorder: Recorder, venvs_root: Path, setup_timeout_s: float) -> dict[str, ServerProcess]:
    env = ensure_env(MLSERVER_ENV, venvs_root, install_timeout_s=setup_timeout_s)
    recorder.env_ready(env)
    model_path = bundled_models() / MODEL / "model.onnx"
    servers: dict[str, ServerProcess] = {}
    for variant in MLSERVER_VARIANTS:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="distinfer-mlserver-")))
        server = start_mlserver(env, folder, model_name=MODEL, model_path=model_path, variant=variant, threads=THREADS)
        stack.callback(stop_session, server)
        servers[variant.name] = server
        recorder.servers[variant.name] = {"url": server.url, **asdict(variant)}
    for name, batching in NODE_VARIANTS.items():
        args = ["--models", MODEL, "--batching", batching]
        node = start_node(bundled_models(), name, threads=THREADS, extra_args=args)
        stack.callback(node.stop)
        servers[name] = node
        recorder.servers[name] = {"url": node.url, "args": args, "threads": THREADS}
    for name, server in servers.items():
        server.wait_ready(timeout_s=120.0 if name.startswith("mlserver") else 60.0)
    return servers


def run_peer(
    params: PeerParams, console: Console, *, venvs_root: Path = VENVS_ROOT, setup_timeout_s: float = 900.0
) -> dict[str, Any]:
    """Make the MLServer venv if needed, start the servers, check their answers, measure, stop everything."""
    recorder = Recorder("peer", params)
    bodies = request_bodies()
    cases: list[Case] = []
    runs = []
    with ExitStack() as stack:
        console.print("[bold]starting[/bold] MLServer (3 configurations) and distinfer nodes (batching off, on)")
        try:
            servers = _start(stack, recorder, venvs_root, setup_timeout_s)
        except (PeerSetupError, OSError, RuntimeError, TimeoutError) as exc:
            recorder.errors.append(f"setup: {exc}")
            servers = {}
        recorder.servers_ready()
        every = [
            Case(name, body, server.url + NODE_PATH, (server.process.pid,))
            for name, server in servers.items()
            for body in bodies.values()
            if body.encoding == "json" or name in NODE_VARIANTS
        ]
        expected = reference_logits(bundled_models() / MODEL / "model.onnx", sample_image())
        cases, recorder.preflight, errors = preflight(every, expected) if every else ([], {}, [])
        recorder.errors += errors
        if cases:
            runs = asyncio.run(measure(cases, params, console))
        recorder.keep_logs_if_failed(servers, runs)
    extra = {"model": MODEL, "threads": THREADS, "body_bytes": {k: len(b.data) for k, b in bodies.items()}}
    extra["mlserver_variants"] = [asdict(variant) for variant in MLSERVER_VARIANTS]
    extra["node_batching"] = NODE_VARIANTS
    return recorder.document(cases, runs, judged_pairs(), extra)
