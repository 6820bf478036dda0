"""Nodes that stall, come back, change their models, and come and go from a watched nodes file."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

from gateway_plugin.processes import ServerProcess, start_node
from gateway_plugin.settings import DiscoverySettings
from tests.integration.conftest import StartNodes, mounted
from tests.integration.discovery_support import BODY, PREFIX, gateway_settings, node_ids, served_by
from tests.integration.polling import until


def write_nodes(path: Path, *nodes: ServerProcess) -> None:
    text = "nodes:\n" + "".join(f"  - url: {node.url}\n" for node in nodes)
    path.with_suffix(".tmp").write_text(text, encoding="utf-8")
    os.replace(path.with_suffix(".tmp"), path)


async def test_a_stalled_node_goes_offline_and_back_and_the_nodes_file_is_followed(
    start_nodes: StartNodes, two_nodes: list[ServerProcess], tmp_path: Path
) -> None:
    (stale,) = start_nodes("stale-1", extra_args=["--models", "digits"])
    nodes_file = tmp_path / "nodes.yaml"
    write_nodes(nodes_file, stale)
    discovery = DiscoverySettings(nodes_file=nodes_file)
    async with mounted(gateway_settings(discovery, probe_timeout_s=0.3)) as (client, distributed):
        assert await served_by(client) == "stale-1"
        stale.process.send_signal(signal.SIGSTOP)  # alive, but it answers nothing: its probes time out
        try:
            await until(lambda: distributed.registry.nodes()[0].status.value == "offline", timeout_s=5)
            response = await client.post(f"{PREFIX}/inference", json={**BODY, "timeout_ms": 1000})
            assert response.status_code in (503, 504)
        finally:
            stale.process.send_signal(signal.SIGCONT)
        back = await until(lambda: served_by(client), timeout_s=5)
        assert back < 3

        write_nodes(nodes_file, stale, two_nodes[1])
        assert await until(lambda: "node-b" in {n.node_id for n in distributed.registry.nodes()}, timeout_s=3) < 1.0
        await until(lambda: _reaches(client, "node-b"))
        write_nodes(nodes_file, two_nodes[1])
        assert await until(lambda: distributed.registry.find("stale-1") is None, timeout_s=3) < 1.0
        assert {await served_by(client) for _ in range(5)} == {"node-b"}
        assert await node_ids(client) == {"node-b": "online"}


async def _reaches(client: object, node_id: str) -> bool:
    return node_id in {await served_by(client) for _ in range(4)}  # type: ignore[arg-type]


async def test_routing_follows_a_node_that_stops_and_starts_serving_models(repository: Path) -> None:
    first = start_node(repository, "shifting", extra_args=["--models", "digits"])
    first.wait_ready()
    port = urlsplit(first.url).port
    second: ServerProcess | None = None
    try:
        async with mounted(gateway_settings(DiscoverySettings(nodes=[first.url]))) as (client, _):
            assert await served_by(client) == "shifting"
            assert (await client.post(f"{PREFIX}/inference", json={**BODY, "model": "digits_a"})).status_code == 404
            first.stop()
            second = start_node(repository, "shifting", port=port, extra_args=["--models", "digits_a"])
            second.wait_ready()
            await until(lambda: served_by(client, "digits_a"), timeout_s=5)
            models = (await client.get(f"{PREFIX}/models")).json()
            assert [m["name"] for m in models if m["ready_nodes"]] == ["digits_a"]
            assert (await client.post(f"{PREFIX}/inference", json=BODY)).status_code == 404
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def test_a_node_with_max_concurrency_is_busy_while_its_slot_is_taken(start_nodes: StartNodes) -> None:
    """The node advertises `--max-concurrency`; with no DISTINFER_NODE_MAX_IN_FLIGHT the gateway follows it."""
    slow = ["--models", "digits", "--max-concurrency", "1", "--fault-latency-ms", "600"]
    (node,) = start_nodes("one-slot", extra_args=slow)
    async with mounted(gateway_settings(DiscoverySettings(nodes=[node.url]))) as (client, distributed):
        learned = distributed.pool.labels
        await until(lambda: learned(distributed.registry.nodes()[0]).get("max_concurrency") == "1", timeout_s=10)
        assert await node_ids(client) == {"one-slot": "online"}
        pending = asyncio.create_task(client.post(f"{PREFIX}/inference", json=BODY))
        await until(lambda: _status_is(client, "busy"), timeout_s=5)
        assert (await pending).status_code == 200
        assert await node_ids(client) == {"one-slot": "online"}


async def _status_is(client: object, status: str) -> bool:
    return await node_ids(client) == {"one-slot": status}  # type: ignore[arg-type]
