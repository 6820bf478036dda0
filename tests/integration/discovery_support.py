"""Shared by the discovery integration tests: one inference, node states, a Consul agent (fake or real)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bench.fakes.consul import FakeConsulThread
from gateway_plugin import Settings
from gateway_plugin.processes import free_port
from gateway_plugin.settings import AuthSettings, BalancerSettings, DiscoverySettings, FlagSettings
from tests.integration.conftest import TEST_JWT_SECRET

PREFIX = "/api/v1/distributed"
IMAGE = [0.0, 0.0, 0.3, 0.8, 0.8, 0.1, 0.0, 0.0] * 8
# Explicit v2 tensors: with no node known the gateway cannot shape a plain value (400), but this is a 503.
TENSOR = {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": IMAGE}
BODY: dict[str, Any] = {"model": "digits", "inputs": [TENSOR], "timeout_ms": 5000}


def gateway_settings(discovery: DiscoverySettings, **balancer: Any) -> Settings:
    """A test gateway: flag on, fast probes, three attempts, the test JWT secret (mounted() sends a token)."""
    return Settings(
        flags=FlagSettings(enabled=True),
        discovery=discovery,
        balancer=BalancerSettings(**{"probe_interval_s": 0.2, "probe_timeout_s": 0.5, "max_attempts": 3, **balancer}),
        auth=AuthSettings(jwt_secret=TEST_JWT_SECRET),
    )


async def served_by(client: httpx.AsyncClient, model: str = "digits") -> str | None:
    """The node id that answered one inference, or None when it was not served by a node.

    Round robin, not the default `latency`: these tests ask which nodes are eligible, and round robin
    sends to every eligible node in turn, where latency may rightly keep preferring one of them.
    """
    response = await client.post(f"{PREFIX}/inference", json={**BODY, "model": model, "strategy": "round_robin"})
    return response.json().get("node_id") if response.status_code == 200 else None


async def node_ids(client: httpx.AsyncClient) -> dict[str, str]:
    """node id -> status, as `GET /nodes` shows them."""
    return {n["node_id"]: n["status"] for n in (await client.get(f"{PREFIX}/nodes")).json()}


@dataclass
class ConsulAgent:
    url: str
    kind: str  # "fake" or "real"
    fake: FakeConsulThread | None = None
    token: str | None = None


NO_REAL_CONSUL = (
    "no real Consul agent: set CONSUL_HTTP_ADDR (and CONSUL_HTTP_TOKEN if it has ACLs) or put a `consul` "
    "binary on PATH to run this module against a real agent too"
)


def _start_dev_agent() -> tuple[str, subprocess.Popen[bytes]]:
    http = free_port()
    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen(
        [
            "consul", "agent", "-dev", "-bind=127.0.0.1", "-client=127.0.0.1", f"-http-port={http}",
            "-dns-port=-1", "-grpc-port=-1", f"-serf-lan-port={ports[0]}", f"-serf-wan-port={ports[1]}",
            f"-server-port={ports[2]}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/status/leader", timeout=1).json():
                return url, process
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("consul -dev did not elect a leader within 30s")


def consul_agents(kind: str) -> Iterator[ConsulAgent]:
    """A fake agent, or a real one (CONSUL_HTTP_ADDR, else `consul agent -dev`), or a skip saying how."""
    if kind == "fake":
        fake = FakeConsulThread(min_deregister_s=0)
        url = fake.start()
        yield ConsulAgent(url, "fake", fake)
        fake.stop()
        return
    address = os.environ.get("CONSUL_HTTP_ADDR")
    if address:
        url = address if "//" in address else f"http://{address}"
        yield ConsulAgent(url, "real", token=os.environ.get("CONSUL_HTTP_TOKEN"))
        return
    if shutil.which("consul") is None:
        pytest.skip(NO_REAL_CONSUL)
    url, process = _start_dev_agent()
    yield ConsulAgent(url, "real")
    process.terminate()
    process.wait(timeout=10)
