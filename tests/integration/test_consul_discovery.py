"""Consul discovery end to end: real nodes register themselves, a mounted gateway follows the watch.

Every test runs against the fake agent (`bench.fakes.consul`, here with ACLs on) and again
against a real Consul when there is one: `CONSUL_HTTP_ADDR=http://127.0.0.1:8500` (plus
`CONSUL_HTTP_TOKEN` when its ACLs are on), or a `consul` binary on PATH, which is started as
`consul agent -dev` on free ports. Without one, the `real` variants are skipped and say how.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from discovery import ConsulSource, NodeRegistry
from gateway_plugin import Settings
from gateway_plugin.processes import ServerProcess, start_node
from gateway_plugin.settings import DiscoverySettings
from tests.integration.conftest import mounted
from tests.integration.discovery_support import (
    BODY,
    PREFIX,
    ConsulAgent,
    FakeConsulThread,
    consul_agents,
    gateway_settings,
    node_ids,
    served_by,
)
from tests.integration.polling import until

TOKEN = "distinfer-test-token"


@pytest.fixture(scope="module", params=["fake", "real"])
def agent(request: pytest.FixtureRequest) -> Iterator[ConsulAgent]:
    if request.param == "fake":
        fake = FakeConsulThread(min_deregister_s=0, acl_tokens={TOKEN: "write"})
        url = fake.start()
        yield ConsulAgent(url, "fake", fake, token=TOKEN)
        fake.stop()
        return
    yield from consul_agents("real")


def consul_settings(agent: ConsulAgent, service: str, nodes: list[str] | None = None) -> Settings:
    return gateway_settings(
        DiscoverySettings(
            sources=["static", "consul"] if nodes else ["consul"],
            nodes=nodes or [],
            consul_url=agent.url,
            consul_service=service,
            consul_token=agent.token,
            consul_wait_s=10,
        )
    )


def registered_node(repository: Path, agent: ConsulAgent, service: str, node_id: str) -> ServerProcess:
    args = ["--models", "digits", "--consul-url", agent.url, "--consul-service", service]
    node = start_node(repository, node_id, extra_args=args, env={"DISTINFER_CONSUL_TOKEN": agent.token or ""})
    node.wait_ready()
    return node


def passing(agent: ConsulAgent, service: str) -> list[str]:
    headers = {"X-Consul-Token": agent.token} if agent.token else {}
    response = httpx.get(f"{agent.url}/v1/health/service/{service}", params={"passing": "1"}, headers=headers)
    response.raise_for_status()
    return [entry["Service"]["ID"] for entry in response.json()]


def deregister(agent: ConsulAgent, service_id: str) -> None:
    headers = {"X-Consul-Token": agent.token} if agent.token else {}
    httpx.put(f"{agent.url}/v1/agent/service/deregister/{service_id}", headers=headers)


async def test_a_node_registers_itself_is_routed_to_with_static_nodes_and_leaves_on_sigterm(
    agent: ConsulAgent, repository: Path, two_nodes: list[ServerProcess]
) -> None:
    service = f"distinfer-test-{uuid.uuid4().hex[:8]}"
    async with mounted(consul_settings(agent, service, nodes=[two_nodes[0].url])) as (client, distributed):
        assert await served_by(client) == "node-a"  # the static node serves before any Consul node exists
        node = registered_node(repository, agent, service, "consul-1")
        try:
            await until(lambda: "consul-1" in {n.node_id for n in distributed.registry.nodes()}, timeout_s=10)
            seen = set()

            async def both_serve() -> bool:
                seen.add(await served_by(client))
                return {"node-a", "consul-1"} <= seen

            await until(both_serve, timeout_s=10)
            entry = next(n for n in (await client.get(f"{PREFIX}/nodes")).json() if n["node_id"] == "consul-1")
            assert (entry["source"], entry["status"]) == ("consul", "online")
            labels = entry["labels"]
            assert (labels["models"], labels["runtime"], labels["device"]) == ("digits", "onnx", "cpu")
            assert labels["consul_service_id"] == f"{service}-consul-1"
            assert passing(agent, service) == [f"{service}-consul-1"]
        finally:
            code = node.stop()
        assert code in (0, -signal.SIGTERM)
        assert passing(agent, service) == []  # deregistered before the process ended
        gone = await until(lambda: distributed.registry.find("consul-1") is None, timeout_s=5)
        assert gone < 1.0
        assert {await served_by(client) for _ in range(10)} == {"node-a"}


async def test_a_crashed_node_stops_being_routed_and_consul_drops_it(agent: ConsulAgent, repository: Path) -> None:
    service = f"distinfer-test-{uuid.uuid4().hex[:8]}"
    node = registered_node(repository, agent, service, "consul-crash")
    async with mounted(consul_settings(agent, service)) as (client, distributed):
        try:
            await until(lambda: served_by(client), timeout_s=10)
            node.kill()
            # The gateway's own probes take it out of rotation before Consul's check notices.
            await until(lambda: distributed.registry.find("consul-crash") is None or not distributed.pool.any_online())
            assert (await client.post(f"{PREFIX}/inference", json=BODY)).status_code == 503
            await until(lambda: passing(agent, service) == [], timeout_s=10)  # its HTTP check went critical
            await until(lambda: distributed.registry.find("consul-crash") is None, timeout_s=5)
            assert await node_ids(client) == {}
        finally:
            node.stop()
            deregister(agent, f"{service}-consul-crash")


async def test_a_watch_without_the_token_sees_nothing_and_keeps_asking(agent: ConsulAgent) -> None:
    if agent.token is None:
        pytest.skip("this agent has no ACLs")
    headers = {"X-Consul-Token": agent.token}
    service = f"distinfer-test-{uuid.uuid4().hex[:8]}"
    body = {"Name": service, "ID": f"{service}-x", "Address": "127.0.0.1", "Port": 9}
    async with httpx.AsyncClient() as consul:
        (await consul.put(f"{agent.url}/v1/agent/service/register", json=body, headers=headers)).raise_for_status()
    try:
        with_token, anonymous = NodeRegistry(), NodeRegistry()
        sources = [
            ConsulSource(agent.url, service=service, token=agent.token),
            ConsulSource(agent.url, service=service),
        ]
        tasks = [asyncio.create_task(s.run(r)) for s, r in zip(sources, (with_token, anonymous), strict=True)]
        try:
            await until(lambda: len(with_token.nodes()) == 1)
            await asyncio.wait_for(sources[1].synced.wait(), 5)
            assert anonymous.nodes() == []
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        deregister(agent, f"{service}-x")


def _registered_models(agent: ConsulAgent, service: str) -> tuple[str, list[str]]:
    headers = {"X-Consul-Token": agent.token} if agent.token else {}
    response = httpx.get(f"{agent.url}/v1/health/service/{service}", headers=headers)
    response.raise_for_status()
    [entry] = response.json()
    tags = sorted(tag for tag in entry["Service"]["Tags"] if tag.startswith("model="))
    return entry["Service"]["Meta"]["models"], tags


async def test_a_node_that_loads_or_unloads_a_model_updates_its_registration(
    agent: ConsulAgent, repository: Path
) -> None:
    """Regression: in explicit model control the registration kept the models the node started with,
    so a gateway reading Consul sent requests for an unloaded model to the node (and missed a new one).
    The resync is 10 s; a load or unload re-registers at once."""
    service = f"distinfer-mc-{uuid.uuid4().hex[:8]}"
    args = ["--models", "digits", "--model-control-mode", "explicit"]
    args += ["--consul-url", agent.url, "--consul-service", service]
    node = start_node(repository, "mc-node", extra_args=args, env={"DISTINFER_CONSUL_TOKEN": agent.token or ""})
    try:
        node.wait_ready()
        await until(lambda: passing(agent, service) != [], timeout_s=15)
        assert _registered_models(agent, service) == ("digits", ["model=digits"])
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
            (await client.post("/v2/repository/models/digits_b/load")).raise_for_status()
        await until(lambda: _registered_models(agent, service)[0] == "digits,digits_b", timeout_s=5)
        assert _registered_models(agent, service)[1] == ["model=digits", "model=digits_b"]
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
            (await client.post("/v2/repository/models/digits/unload")).raise_for_status()
        await until(lambda: _registered_models(agent, service) == ("digits_b", ["model=digits_b"]), timeout_s=5)
        assert passing(agent, service) != []  # still one passing instance: replaced, not lost
    finally:
        node.stop()
