"""The real processes of a chaos run: nodes, fault fronts before them, and gateways, all on loopback.

Nodes are started once per run and shared by the scenarios; each scenario starts its own gateway
(fresh balancer state) over the node entries it needs, so one scenario's ejections cannot leak
into the next one's figures. Everything started is stopped when the `Cluster` closes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from gateway_plugin.processes import ServerProcess, free_port, start_gateway, start_node

__all__ = ["PREFIX", "Cluster", "Front", "gateway_env", "mint_token"]

PREFIX = "/api/v1/distributed"


def mint_token(secret: str, *, scope: str = "infer admin", ttl_s: int = 3600) -> str:
    """An HS256 bearer token for the gateway started with `DISTINFER_JWT_SECRET=secret` (CONTRACT §6)."""
    import jwt

    now = int(time.time())
    return jwt.encode({"sub": "chaos", "scope": scope, "iat": now, "exp": now + ttl_s}, secret, algorithm="HS256")


def gateway_env(node_urls: list[str], secret: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Settings for a gateway that notices faults fast: short probes, a per-attempt timeout, 3 attempts."""
    return {
        "ENABLE_DISTRIBUTED_INFERENCE": "true",
        "DISTINFER_DISCOVERY": "static",
        "DISTINFER_NODES": ",".join(node_urls),
        "DISTINFER_PROBE_INTERVAL_S": "0.2",
        "DISTINFER_PROBE_TIMEOUT_S": "0.5",
        "DISTINFER_MAX_ATTEMPTS": "3",
        # Generous next to a node's ~10 ms answers, yet short enough that a hung node costs one
        # attempt, not the request: at 1 s, an overloaded 2-core machine timed out healthy nodes too.
        "DISTINFER_ATTEMPT_TIMEOUT_MS": "2500",
        "DISTINFER_DEFAULT_TIMEOUT_MS": "10000",
        "DISTINFER_JWT_SECRET": secret,
        **(extra or {}),
    }


@dataclass
class Front:
    """A running `bench.chaos.front` process in front of one node."""

    kind: str
    url: str
    control_url: str
    process: subprocess.Popen[bytes]
    log: IO[bytes] = field(repr=False)

    def set_mode(self, mode: str, delay_ms: float = 0.0) -> None:
        response = httpx.put(f"{self.control_url}/mode", json={"mode": mode, "delay_ms": delay_ms}, timeout=5)
        response.raise_for_status()

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.control_url}/stats", timeout=5).json())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


class Cluster:
    """Starts and owns the processes; `close()` stops them all, whatever state they are in."""

    def __init__(self, repository: Path, *, secret: str | None = None) -> None:
        self.repository = repository
        self.secret = secret or secrets.token_hex(32)
        self.token = mint_token(self.secret)
        self.nodes: dict[str, ServerProcess] = {}
        self._ports: dict[str, int] = {}
        self._fronts: list[Front] = []
        self._gateways: list[ServerProcess] = []

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start_nodes(self, *node_ids: str) -> list[ServerProcess]:
        """Start (or restart on the same port) these nodes; all are launched before waiting on any."""
        started = []
        for node_id in node_ids:
            port = self._ports.setdefault(node_id, free_port())
            node = start_node(self.repository, node_id, port=port, extra_args=["--models", "digits"])
            self.nodes[node_id] = node
            started.append(node)
        for node in started:
            node.wait_ready(timeout_s=60)
        return started

    def kill_node(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.kill()
        node.stop()  # closes the log; the process is already gone

    def start_front(self, kind: str, target: str, *, mode: str = "pass", delay_ms: float = 0.0) -> Front:
        port, control = free_port(), free_port()
        log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by Front.stop)
        args = [sys.executable, "-m", "bench.chaos.front", kind, "--port", str(port), "--control-port", str(control)]
        args += ["--target", target, "--mode", mode, "--delay-ms", str(delay_ms)]
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        front = Front(kind, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control}", process, log)
        self._fronts.append(front)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"front exited: {log.read().decode(errors='replace')[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                front.stats()
                return front
            time.sleep(0.05)
        raise TimeoutError("front not ready within 20 s")

    def start_gateway(
        self, node_urls: list[str], *, extra_env: Mapping[str, str] | None = None, port: int | None = None
    ) -> ServerProcess:
        gateway = start_gateway(gateway_env(node_urls, self.secret, extra_env), port=port)
        self._gateways.append(gateway)
        gateway.wait_ready(timeout_s=60)
        return gateway

    def wait_serving(self, gateway: ServerProcess, node_ids: set[str], timeout_s: float = 30.0) -> None:
        """Until the gateway sees every one of `node_ids` online and in rotation."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2, headers=self.auth) as client:
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    entries = client.get(f"{gateway.url}{PREFIX}/nodes").json()
                    ready = {
                        e["node_id"] for e in entries if e.get("status") == "online" and e.get("breaker") != "open"
                    }
                    if node_ids <= ready:
                        return
                time.sleep(0.05)
        raise TimeoutError(f"gateway does not see {sorted(node_ids)} online within {timeout_s}s")

    def stop_gateway(self, gateway: ServerProcess) -> int:
        code = gateway.stop()
        with contextlib.suppress(ValueError):
            self._gateways.remove(gateway)
        return code

    def close(self) -> None:
        for gateway in self._gateways:
            gateway.stop()
        for front in self._fronts:
            front.stop()
        for node in self.nodes.values():
            node.stop()
        self._gateways.clear()
        self._fronts.clear()

    @contextlib.contextmanager
    def running(self) -> Iterator[Cluster]:
        try:
            yield self
        finally:
            self.close()
