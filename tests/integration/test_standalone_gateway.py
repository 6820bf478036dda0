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


def test_the_process_probes_answer_while_the_flag_is_switched_off(two_nodes: list[ServerProcess]) -> None:
    """Regression: the chart probed the plugin's <prefix>/health, which is 404 while the flag is off, so
    switching it off at runtime got every pod restarted, with the flag back on from its environment."""
    gateway = start_gateway(
        {"DISTINFER_NODES": two_nodes[0].url, "DISTINFER_AUTH_DISABLED": "true", "ENABLE_DISTRIBUTED_INFERENCE": "true"}
    )
    try:
        gateway.wait_ready()
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            assert client.get("/livez").status_code == 200
            assert client.get("/readyz").json() == {"status": "ok"}
            assert client.put(f"{PREFIX}/flags", json={"enabled": False}).status_code == 200
            assert client.get(f"{PREFIX}/health/live").status_code == 404  # the contract: off is 404
            assert client.get("/livez").status_code == 200
            assert client.get("/readyz").status_code == 200
    finally:
        gateway.stop()


def test_every_discovery_source_is_accepted_and_bad_settings_are_refused_at_start() -> None:
    every = DiscoverySettings(sources=["static", "consul", "dns"], dns_srv="_http._tcp.nodes.example")
    DistributedInference(settings=Settings(discovery=every))
    with pytest.raises(ValueError, match="Consul URL"):
        DistributedInference(settings=Settings(discovery=DiscoverySettings(sources=["consul"], consul_url="ftp://c")))
    bad_nameserver = DiscoverySettings(sources=["dns"], dns_srv="_x._tcp.example", dns_nameserver="127.0.0.1:x")
    with pytest.raises(ValueError, match="nameserver"):
        DistributedInference(settings=Settings(discovery=bad_nameserver))
    with pytest.raises(ValueError, match="DISTINFER_DNS_SRV"):
        DiscoverySettings(sources=["dns"])
