"""MLServer as a peer: its settings, a model repository holding the ONNX runtime, and its process.

MLServer is configured as its docs describe for production: `settings.json` at the root of the
model repository (ports, `debug: false` so uvicorn writes no access log, the default single
parallel inference worker) and one folder per model with `model-settings.json` naming the
runtime class. `bench/peers/mlserver_runtime.py` is copied beside it (MLServer imports the
runtime from the model's folder). Adaptive batching is off unless asked for, as in MLServer.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers.procs import spawn_session
from bench.peers.venvs import ReadyEnv
from gateway_plugin.processes import ServerProcess, free_port

__all__ = [
    "RUNTIME_CLASS",
    "MLServerVariant",
    "model_settings",
    "server_settings",
    "start_mlserver",
    "write_repository",
]

_RUNTIME_SOURCE = Path(__file__).with_name("mlserver_runtime.py")
RUNTIME_CLASS = "mlserver_runtime.OnnxModel"


@dataclass(frozen=True, slots=True)
class MLServerVariant:
    """One MLServer configuration: inference worker processes (0: in the server process) and adaptive batching."""

    name: str = "mlserver"
    parallel_workers: int = 1
    max_batch_size: int = 0
    max_batch_time_s: float = 0.0

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1


def server_settings(*, http_port: int, grpc_port: int, metrics_port: int, parallel_workers: int) -> dict[str, Any]:
    """settings.json: loopback only, every port explicit (gRPC and metrics servers always start), no access log."""
    if len({http_port, grpc_port, metrics_port}) != 3:
        raise ValueError("MLServer's HTTP, gRPC and metrics ports must differ")
    if parallel_workers < 0:
        raise ValueError("parallel_workers must be >= 0")
    return {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": parallel_workers,
        "load_models_at_startup": True,
    }


def model_settings(
    *, name: str, model_path: Path, threads: int, max_batch_size: int = 0, max_batch_time_s: float = 0.0
) -> dict[str, Any]:
    """model-settings.json for the ONNX runtime; batching fields only when adaptive batching is on."""
    if threads < 1:
        raise ValueError("threads must be >= 1")
    if max_batch_size < 0 or max_batch_time_s < 0:
        raise ValueError("batch size and time must be >= 0")
    settings: dict[str, Any] = {
        "name": name,
        "implementation": RUNTIME_CLASS,
        "parameters": {"uri": str(model_path.resolve()), "version": "1", "extra": {"threads": threads}},
    }
    if max_batch_size > 1:
        settings["max_batch_size"] = max_batch_size
        settings["max_batch_time"] = max_batch_time_s
    return settings


def write_repository(
    folder: Path,
    *,
    model_name: str,
    model_path: Path,
    variant: MLServerVariant,
    threads: int,
    ports: tuple[int, int, int],
) -> Path:
    """Write settings.json, <model>/model-settings.json and the runtime module under `folder`; returns `folder`."""
    http_port, grpc_port, metrics_port = ports
    settings = server_settings(
        http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, parallel_workers=variant.parallel_workers
    )
    model = model_settings(
        name=model_name,
        model_path=model_path,
        threads=threads,
        max_batch_size=variant.max_batch_size,
        max_batch_time_s=variant.max_batch_time_s,
    )
    model_dir = folder / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    (model_dir / "model-settings.json").write_text(json.dumps(model, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(_RUNTIME_SOURCE, model_dir / "mlserver_runtime.py")
    return folder


def start_mlserver(
    env: ReadyEnv, folder: Path, *, model_name: str, model_path: Path, variant: MLServerVariant, threads: int = 1
) -> ServerProcess:
    """`mlserver start <folder>` from the peer venv on free loopback ports; ready when the model is."""
    ports = (free_port(), free_port(), free_port())
    write_repository(
        folder, model_name=model_name, model_path=model_path, variant=variant, threads=threads, ports=ports
    )
    command = [str(env.script("mlserver")), "start", str(folder)]
    return spawn_session(variant.name, command, ports[0], f"/v2/models/{model_name}/ready", cwd=folder)
