"""The node's Consul registration: what it registers, when, keeping it there, and leaving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bench.fakes.consul import FakeConsul
from worker.consul_http import ConsulClient
from worker.registration import ConsulRegistration, consul_registration, service_definition, service_id_for


def test_the_definition_carries_models_runtime_device_and_a_ready_check() -> None:
    reg = ConsulRegistration(url="http://c:8500", advertise_host="10.0.0.5", port=8001, deregister_after="90s")
    body = service_definition(reg, "node-1", {"digits": "onnx", "digits_export": "torch_export"})
    assert body["name"] == "distinfer-node"
    assert body["service_id"] == "distinfer-node-node-1"
    assert body["address"] == "10.0.0.5"
    assert body["port"] == 8001
    assert "model=digits" in body["tags"]
    assert "runtime=torch_export" in body["tags"]
    meta = body["meta"]
    assert meta["node_id"] == "node-1"
    assert meta["models"] == "digits,digits_export"
    assert meta["runtime"] == "onnx,torch_export"
    assert meta["device"] == "cpu"
    assert int(meta["memory"]) > 0
    check = body["check"]
    assert check["http"] == "http://10.0.0.5:8001/v2/health/ready"
    assert check["interval"] == "1s"
    assert check["DeregisterCriticalServiceAfter"] == "90s"
    assert check["Status"] == "passing"
    v6 = service_definition(ConsulRegistration(url="x", advertise_host="::1", port=1), "n", {})
    assert v6["check"]["http"] == "http://[::1]:1/v2/health/ready"
    many = service_definition(reg, "n", {f"model_{i:04d}": "onnx" for i in range(200)})
    assert len(many["meta"]["models"]) <= 512  # Consul's limit on a Meta value; the tags list them all
    assert service_id_for("svc", "host:8001/x") == "svc-host-8001-x"


@pytest.fixture
async def node_port() -> AsyncIterator[tuple[int, dict[str, int]]]:
    """A stand-in for the node's HTTP side: only `/v2/health/ready`, answering what the test says."""
    answer = {"status": 200}

    async def ready(_: web.Request) -> web.Response:
        return web.Response(status=answer["status"])

    app = web.Application()
    app.router.add_get("/v2/health/ready", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield site._server.sockets[0].getsockname()[1], answer  # type: ignore[union-attr]
    await runner.cleanup()


async def test_registers_when_serving_re_registers_when_lost_and_deregisters_on_exit(
    node_port: tuple[int, dict[str, int]],
) -> None:
    port, _ = node_port
    fake = FakeConsul()
    await fake.start()
    agent = ConsulClient(fake.url)
    reg = ConsulRegistration(url=fake.url, advertise_host="127.0.0.1", port=port, token="t", resync_s=0.1)
    try:
        async with consul_registration(reg, "n1", lambda: {"digits": "onnx"}) as registration:
            assert registration is not None
            await asyncio.wait_for(registration.registered.wait(), 5)
            services = await agent.agent.services()
            assert list(services) == ["distinfer-node-n1"]
            assert services["distinfer-node-n1"]["Meta"]["models"] == "digits"
            _, entries = await agent.health.service("distinfer-node", passing=True)
            assert len(entries) == 1  # passing from the start
            await agent.agent.service.deregister("distinfer-node-n1")  # an agent that forgot it
            for _ in range(100):
                if await agent.agent.services():
                    break
                await asyncio.sleep(0.05)
            assert list(await agent.agent.services()) == ["distinfer-node-n1"]
        assert await agent.agent.services() == {}
        async with consul_registration(None, "n1", dict) as nothing:
            assert nothing is None
    finally:
        await agent.close()
        await fake.stop()


async def test_an_agent_that_is_down_does_not_stop_the_node(node_port: tuple[int, dict[str, int]]) -> None:
    port, _ = node_port
    reg = ConsulRegistration(url="http://127.0.0.1:9", advertise_host="127.0.0.1", port=port)
    async with consul_registration(reg, "n1", dict) as registration:
        assert registration is not None
        await asyncio.sleep(0.3)
        assert not registration.registered.is_set()
    # Leaving tried to deregister, failed quietly, and did not hang.
