"""Ray Serve as a peer: `bench/peers/ray_app.py` run by the Ray venv's Python, in its own session.

The launcher starts a private local Ray cluster (its own temp dir, no dashboard, usage stats and
token auth off: a loopback bench) and a Serve app of N replicas. Stopping sends SIGTERM (Serve and
Ray shut down), then kills what is left of the session: never `ray stop`, which would end every
Ray cluster on the machine, including ones this bench did not start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.peers.procs import spawn_session
from bench.peers.venvs import ReadyEnv
from gateway_plugin.processes import ServerProcess, free_port

__all__ = ["RAY_APP", "RayServeConfig", "launcher_command", "launcher_env", "start_ray_serve"]

RAY_APP = Path(__file__).with_name("ray_app.py")


@dataclass(frozen=True, slots=True)
class RayServeConfig:
    """Replicas (each 1 CPU of a `num_cpus=replicas` cluster), ONNX threads per replica, Serve's in-flight cap."""

    replicas: int = 2
    threads: int = 1
    # Serve's default is 5 per replica, and the proxy queues the rest: measured here at c=64 that gave
    # Ray ~60 req/s and a p99 of 2-3 s, against ~240 req/s and ~0.4 s with 64. A distinfer node takes
    # whatever comes, so the matching (and Ray's better) setting is a cap at the client's concurrency.
    max_ongoing_requests: int | None = 64  # None: Serve's default

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= 16 or self.threads < 1:
            raise ValueError("replicas must be 1..16 and threads >= 1")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise ValueError("max_ongoing_requests must be >= 1")


def launcher_command(
    python: Path, *, port: int, model_name: str, model_path: Path, config: RayServeConfig, temp_dir: Path
) -> list[str]:
    command = [
        str(python),
        str(RAY_APP),
        "--port",
        str(port),
        "--model-name",
        model_name,
        "--model-path",
        str(model_path.resolve()),
        "--replicas",
        str(config.replicas),
        "--threads",
        str(config.threads),
        "--temp-dir",
        str(temp_dir),
    ]
    if config.max_ongoing_requests is not None:
        command += ["--max-ongoing-requests", str(config.max_ongoing_requests)]
    return command


def launcher_env() -> dict[str, str]:
    """No usage report (no network here), no token written to ~/.ray, quiet logs."""
    return {
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_DEDUP_LOGS": "0",
        "RAY_SERVE_LOG_TO_STDERR": "0",
    }


def start_ray_serve(
    env: ReadyEnv, *, model_name: str, model_path: Path, config: RayServeConfig, temp_dir: Path
) -> ServerProcess:
    """The launcher on a free loopback port; ready when a replica answers `GET /v2/health/ready`."""
    port = free_port()
    command = launcher_command(
        env.python, port=port, model_name=model_name, model_path=model_path, config=config, temp_dir=temp_dir
    )
    return spawn_session("ray-serve", command, port, "/v2/health/ready", env=launcher_env())
