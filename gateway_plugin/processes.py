"""Starting and stopping real distinfer processes on loopback: for `distinfer demo`, tests and benches.

Each server is `python -m gateway_plugin.cli ...` on a free port; `wait_ready` polls its health
endpoint; `stop()` sends SIGTERM (clean shutdown) and `kill()` SIGKILL (a crash).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

__all__ = ["ServerProcess", "free_port", "start_gateway", "start_node"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    name: str
    url: str
    health_path: str
    process: subprocess.Popen[bytes]
    log: IO[bytes] | None = field(default=None, repr=False)
    final_output: str = field(default="", repr=False)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Poll the health endpoint until 200; on failure the process is stopped, never leaked."""
        try:
            self._poll_ready(timeout_s)
        except BaseException:
            self.stop(timeout_s=5)
            raise

    def _poll_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.output()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + self.health_path).status_code == 200:
                        return
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready at {self.url} within {timeout_s}s: {self.output()}")

    def output(self) -> str:
        if self.log is None:
            return self.final_output
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-2000:]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node dies as in a crash, with no goodbye."""
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it has not stopped within `timeout_s`; returns the exit code.

        uvicorn shuts down cleanly on SIGTERM and then re-raises the signal, so a clean stop
        reads as -15 here (143 in a shell), as for any well-behaved Unix server.
        """
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.log is not None:
            self.final_output = self.output()
            self.log.close()
            self.log = None
        return int(self.process.returncode)


def _spawn(
    name: str, args: list[str], port: int, health: str, env: Mapping[str, str] | None, cwd: Path | None = None
) -> ServerProcess:
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by ServerProcess.stop)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway_plugin.cli", *args, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=full_env,
        cwd=cwd,
    )
    return ServerProcess(name, f"http://127.0.0.1:{port}", health, process, log)


def start_node(
    model_repository: Path,
    node_id: str,
    *,
    port: int | None = None,
    threads: int = 1,
    extra_args: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    port = port or free_port()
    args = ["node", "--model-repository", str(model_repository), "--node-id", node_id, "--threads", str(threads)]
    args += ["--log-level", "warning", *(extra_args or [])]
    return _spawn(node_id, args, port, "/v2/health/ready", env)


def start_gateway(
    env: Mapping[str, str],
    *,
    port: int | None = None,
    prefix: str = "/api/v1/distributed",
    extra_args: list[str] | None = None,
    cwd: Path | None = None,
) -> ServerProcess:
    """`cwd`: where it runs. `python -m` puts it first on `sys.path`, ahead of PYTHONPATH: a gateway
    meant to run a copy of the code (PYTHONPATH) must not be started from the checkout."""
    port = port or free_port()
    args = ["gateway", "--log-level", "warning", *(extra_args or [])]
    return _spawn("gateway", args, port, f"{prefix}/health/live", env, cwd)
