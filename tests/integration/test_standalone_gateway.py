"""`distinfer gateway` as a real process in front of real nodes, configured only by the environment."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from gateway_plugin import DistributedInference, Settings
from gateway_plugin.processes import ServerProcess, start_gateway
from gateway_plugin.settings import DiscoverySettings

PREFIX = "/api/v1/distributed"


def test_standalone_gateway_serves_and_stops_cleanly(two_nodes: list[ServerProcess], repository: Path) -> None:
    gateway = start_gateway(
        {
            "DISTINFER_NODES": ",".join(n.url for n in two_nodes),
            "DISTINFER_LOCAL_MODEL_REPOSITORY": str(repository),
            "DISTINFER_AUTH_DISABLED": "true",
        }
    )
    try:
        gateway.wait_ready()
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            response = client.post(f"{PREFIX}/inference", json={"model": "digits", "inputs": [[0.25] * 8] * 8})
            docs = client.get("/openapi.json")
        assert response.status_code == 200, response.text
        assert response.json()["node_id"] in {"node-a", "node-b"}
        assert docs.status_code == 200
    finally:
        code = gateway.stop()
    assert code in (0, -signal.SIGTERM)


def test_discovery_not_yet_built_is_refused_at_start_not_ignored() -> None:
    with pytest.raises(ValueError, match="not available"):
        DistributedInference(settings=Settings(discovery=DiscoverySettings(sources=["consul"])))
