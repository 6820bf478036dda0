"""A client that promises a body and leaves mid-way is its own problem: no 500, no traceback in our logs."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gateway_plugin.processes import ServerProcess, start_gateway
from tests.integration.orchestration_helpers import SLOW_MODEL, set_latency, slow_node_fixture


def _send_half_a_body(url: str, path: str) -> None:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"inputs": [')  # 12 of the 1000 bytes promised


def _wait_quiet(process: ServerProcess) -> str:
    time.sleep(1.0)  # let the server notice the closed connection and log whatever it logs
    return process.output()


@pytest.fixture(scope="module")
def gateway(two_nodes: list[ServerProcess]) -> ServerProcess:
    env = {"DISTINFER_NODES": ",".join(n.url for n in two_nodes), "DISTINFER_AUTH_DISABLED": "true"}
    process = start_gateway(env)
    process.wait_ready()
    yield process  # type: ignore[misc]
    process.stop()


@pytest.mark.parametrize("path", ["/api/v1/distributed/inference", "/api/v1/distributed/v2/models/digits/infer"])
def test_gateway_does_not_treat_a_vanished_client_as_its_own_error(gateway: ServerProcess, path: str) -> None:
    _send_half_a_body(gateway.url, path)
    log = _wait_quiet(gateway)
    assert "Traceback" not in log
    assert "unexpected error" not in log


def test_node_does_not_treat_a_vanished_client_as_its_own_error(two_nodes: list[ServerProcess]) -> None:
    node = two_nodes[1]
    _send_half_a_body(node.url, "/v2/models/digits/infer")
    assert "Traceback" not in _wait_quiet(node)


@pytest.fixture(scope="module")
def slow_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from slow_node_fixture(tmp_path_factory, extra=("charlm",))


@pytest.fixture(scope="module")
def slow_gateway(slow_node: ServerProcess) -> Iterator[ServerProcess]:
    process = start_gateway({"DISTINFER_NODES": slow_node.url, "DISTINFER_AUTH_DISABLED": "true"})
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize("route", ["inference", "batch", "parallel", "pipeline", "stream", "tokens", "tokens_get"])
def test_a_client_that_leaves_cancels_its_orchestrated_calls(
    slow_node: ServerProcess, slow_gateway: ServerProcess, route: str
) -> None:
    """Regression: Starlette keeps a handler running after its client left; a batch, fan-out or
    pipeline ran all its node calls to the end (minutes of cluster work and an admission place).
    So did a token stream whose client left before its first token (audit)."""
    set_latency(slow_node, 10_000)
    one = {"model": SLOW_MODEL, "inputs": [[0.0] * 8] * 8, "timeout_ms": 30_000}
    bodies: dict[str, Any] = {
        "batch": {"requests": [one] * 4, "max_concurrency": 4, "coalesce": False},
        "parallel": {"models": [SLOW_MODEL], "inputs": one["inputs"], "timeout_ms": 30_000},
        "pipeline": {"stages": [{"id": "a", **one}, {"id": "b", **one, "depends_on": ["a"]}]},
        "inference": one,
        "stream": {"inputs": one["inputs"], "timeout_ms": 30_000},  # a result stream: one node call
        "tokens": {"prompt": "the ", "parameters": {"max_tokens": 4}, "timeout_ms": 30_000},
    }
    paths = {"inference": "/inference", "stream": f"/inference/stream/{SLOW_MODEL}"}
    paths["tokens"] = "/inference/stream/charlm"
    try:
        api = f"{slow_gateway.url}/api/v1/distributed"
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{api}/health/ready").status_code == 200
            url, once = api + paths.get(route, f"/inference/{route}"), httpx.Timeout(1.0)
            if route == "tokens_get":
                tokens = f"{api}/inference/stream/charlm"
                request = client.build_request("GET", tokens, params={"prompt": "the "}, timeout=once)
            else:
                request = client.build_request("POST", url, json=bodies[route], timeout=once)
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
                client.send(request)
            left = time.monotonic()
            while _in_flight(client, api) and time.monotonic() - left < 5:
                time.sleep(0.1)
            assert _in_flight(client, api) == 0  # cancelled: not after the node's 10 s
    finally:
        set_latency(slow_node, 0)


def _in_flight(client: httpx.Client, api: str) -> int:
    return sum(node["in_flight"] for node in client.get(f"{api}/nodes").json())
