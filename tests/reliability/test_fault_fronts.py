"""The fault fronts themselves do what the scenarios rely on (a harness that cannot misbehave proves nothing)."""

from __future__ import annotations

import time

import httpx
import pytest

from bench.chaos.cluster import Cluster, Front
from bench.chaos.scenarios import HEALTHY
from worker.protocol import HEADER_LENGTH

pytestmark = pytest.mark.timeout(60)

BINARY_REQUEST = {
    "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.5] * 64}],
    "parameters": {"binary_data_output": True},
}


def _infer(front: Front, timeout: float = 2.0) -> httpx.Response:
    return httpx.post(f"{front.url}/v2/models/digits/infer", json=BINARY_REQUEST, timeout=timeout)


def test_http_front_modes(cluster: Cluster) -> None:
    front = cluster.start_front("http", cluster.nodes[HEALTHY].url)
    try:
        whole = _infer(front)
        assert whole.status_code == 200
        assert int(whole.headers[HEADER_LENGTH]) < len(whole.content)
        front.set_mode("truncated")
        cut = _infer(front)
        assert len(cut.content) == len(whole.content) // 2
        front.set_mode("garbage")
        assert _infer(front).headers["content-type"] == "application/octet-stream"
        front.set_mode("error500")
        assert _infer(front).status_code == 500
        front.set_mode("hang")
        assert httpx.get(f"{front.url}/v2/health/ready", timeout=2).status_code == 200  # health still passes
        with pytest.raises(httpx.ReadTimeout):
            _infer(front, timeout=0.5)
        assert front.stats()["seen"]["infer:hang"] == 1
        with pytest.raises(httpx.HTTPStatusError):
            front.set_mode("explode")
    finally:
        front.stop()


def test_tcp_front_blackhole_and_delay(cluster: Cluster) -> None:
    front = cluster.start_front("tcp", cluster.nodes[HEALTHY].url)
    try:
        assert httpx.get(f"{front.url}/v2/health/ready", timeout=2).status_code == 200
        front.set_mode("delay", delay_ms=150)
        start = time.monotonic()
        assert httpx.get(f"{front.url}/v2/health/ready", timeout=5).status_code == 200
        assert time.monotonic() - start >= 0.3  # 150 ms each way, and a new connection's handshake
        front.set_mode("blackhole")
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{front.url}/v2/health/ready", timeout=0.5)
    finally:
        front.stop()
