"""A client that promises a body and leaves mid-way is its own problem: no 500, no traceback in our logs."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest

from gateway_plugin.processes import ServerProcess, start_gateway


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
