"""The Consul watch against the fake agent: blocking queries, index resets, back-off, ACL, datacenter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from bench.fakes.consul import FakeConsul
from discovery.consul import ConsulSource, next_index, spec_from_entry
from discovery.registry import NodeRegistry
from discovery.source import Backoff
from gateway_plugin.processes import free_port
from worker.consul_http import ConsulClient, consul_address


async def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        assert loop.time() - start < timeout_s, "condition not met in time"
        await asyncio.sleep(0.01)
    return loop.time() - start


def urls(registry: NodeRegistry) -> list[str]:
    return sorted(node.url for node in registry.nodes())


def instance(n: int, **extra: object) -> dict[str, object]:
    return {"name": "distinfer-node", "service_id": f"node-{n}", "address": "127.0.0.1", "port": 9000 + n, **extra}


@pytest.fixture
async def fake() -> AsyncIterator[FakeConsul]:
    consul = FakeConsul(min_deregister_s=0)
    await consul.start()
    yield consul
    await consul.stop()


@pytest.fixture
async def agent(fake: FakeConsul) -> AsyncIterator[ConsulClient]:
    client = ConsulClient(fake.url)
    yield client
    await client.close()


async def watching(source: ConsulSource, registry: NodeRegistry) -> asyncio.Task[None]:
    return asyncio.create_task(source.run(registry))


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_registrations_and_check_failures_are_seen_within_a_second(fake: FakeConsul, agent: ConsulClient) -> None:
    registry = NodeRegistry()
    source = ConsulSource(fake.url, wait_s=30)
    task = await watching(source, registry)
    try:
        await asyncio.wait_for(source.synced.wait(), 2)
        assert registry.nodes() == []
        await agent.agent.service.register(**instance(1, meta={"node_id": "n1", "models": "digits"}))
        assert await wait_for(lambda: urls(registry) == ["http://127.0.0.1:9001"]) < 1.0
        node = registry.nodes()[0]
        assert node.node_id == "n1"
        assert node.spec.labels["models"] == "digits"
        assert node.source == "consul"
        # A critical check takes the instance out of `?passing`.
        await agent.agent.service.register(**instance(2, check={"ttl": "30s"}))  # starts critical
        await agent.agent.service.register(**instance(3, check={"ttl": "30s", "Status": "passing"}))
        await wait_for(lambda: urls(registry) == ["http://127.0.0.1:9001", "http://127.0.0.1:9003"])
        await agent.agent.check.ttl_fail("service:node-3")
        assert await wait_for(lambda: urls(registry) == ["http://127.0.0.1:9001"]) < 1.0
        await agent.agent.service.deregister("node-1")
        assert await wait_for(lambda: urls(registry) == []) < 1.0
        assert source.index > 1
    finally:
        await stop(task)


async def test_an_index_that_goes_back_restarts_the_watch(fake: FakeConsul, agent: ConsulClient) -> None:
    registry = NodeRegistry()
    source = ConsulSource(fake.url, wait_s=0.5)
    task = await watching(source, registry)
    try:
        for n in range(1, 4):
            await agent.agent.service.register(**instance(n))
        await wait_for(lambda: len(registry.nodes()) == 3)
        fake.rewind(2)  # below what the watch blocks on: without a reset it would wait for ~10 writes
        await agent.agent.service.register(**instance(4))
        await wait_for(lambda: len(registry.nodes()) == 4, timeout_s=3.0)
        assert source.index < 10
    finally:
        await stop(task)


async def test_returns_that_change_nothing_are_rate_limited(fake: FakeConsul, agent: ConsulClient) -> None:
    registry = NodeRegistry()
    source = ConsulSource(fake.url, wait_s=30, min_interval_s=0.05)
    task = await watching(source, registry)
    try:
        await agent.agent.service.register(**instance(1))
        await wait_for(lambda: len(registry.nodes()) == 1)
        reads = fake.reads
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < 1.0:  # an idempotent write every 5 ms wakes every blocked query
            await agent.agent.service.register(**instance(1))
            await asyncio.sleep(0.005)
        spent = loop.time() - started
        assert fake.reads - reads <= spent / 0.05 + 3  # one query per 50 ms at most, not one per write
        assert len(registry.nodes()) == 1
    finally:
        await stop(task)


def test_index_rules() -> None:
    assert next_index(0, 7) == 7
    assert next_index(7, 7) == 7
    assert next_index(7, 3) == 0  # backwards: reset
    assert next_index(0, 0) == 1  # never block on 0
    assert next_index(5, -2) == 0


async def register(url: str, *numbers: int) -> None:
    agent = ConsulClient(url)
    for n in numbers:
        await agent.agent.service.register(**instance(n))
    await agent.close()


async def test_an_agent_that_goes_away_keeps_the_listing_and_a_restarted_one_is_followed_at_once() -> None:
    """Regression (the restart): after an outage the watch blocked on the old agent's index; a new
    agent counts from 1 again, so its listing showed only when the whole `wait` ran out (60 s by default)."""
    port = free_port()
    first = FakeConsul()
    await first.start(port=port)
    registry = NodeRegistry()
    source = ConsulSource(first.url, wait_s=30, backoff=Backoff(base_s=0.05, cap_s=0.2))
    task = await watching(source, registry)
    try:
        await register(first.url, *range(12))  # the old agent's index climbs well above where a new one starts
        await wait_for(lambda: len(registry.nodes()) == 12)
        await first.stop()
        await asyncio.sleep(0.5)
        assert len(registry.nodes()) == 12  # an outage of Consul is not an outage of the nodes
        second = FakeConsul()  # a restarted -dev agent: empty, and its index starts over
        await second.start(port=port)
        try:
            await register(second.url, 99)
            assert await wait_for(lambda: urls(registry) == ["http://127.0.0.1:9099"], timeout_s=5) < 5
        finally:
            await second.stop()
    finally:
        await stop(task)


async def test_the_watch_outlives_answers_it_cannot_read() -> None:
    """Regression: a JSON object, a null entry or a proxy's non-UTF-8 error page raised out of the watch
    (AttributeError, UnicodeDecodeError) and ended discovery for good."""
    from aiohttp import web

    good = [{"Node": {"Node": "a", "Address": "127.0.0.1"}, "Service": {"ID": "n1", "Port": 9001}}]
    answers = [
        web.json_response({"error": "not a list"}, headers={"X-Consul-Index": "5"}),
        web.json_response([None, *good], headers={"X-Consul-Index": "6"}),
        web.Response(status=502, body=b"Bad gateway \xe9", content_type="text/html"),
    ]

    async def health(request: web.Request) -> web.Response:
        if answers:
            return answers.pop(0)
        await asyncio.sleep(0.05)
        return web.json_response(good, headers={"X-Consul-Index": "7"})

    app = web.Application()
    app.router.add_get("/v1/health/service/{name}", health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    registry = NodeRegistry()
    source = ConsulSource(f"http://127.0.0.1:{port}", wait_s=1, backoff=Backoff(base_s=0.01, cap_s=0.05))
    task = await watching(source, registry)
    try:
        await wait_for(lambda: not answers and urls(registry) == ["http://127.0.0.1:9001"])
        await asyncio.sleep(0.1)
        assert not task.done()
    finally:
        await stop(task)
        await runner.cleanup()


async def test_acl_token_and_datacenter() -> None:
    fake = FakeConsul(acl_tokens={"reader": "read", "writer": "write"})
    await fake.start()
    tasks: list[asyncio.Task[None]] = []
    try:
        writer = ConsulClient(fake.url, token="writer")
        await writer.agent.service.register(**instance(1))
        await writer.close()
        right, wrong, anonymous, elsewhere = (NodeRegistry() for _ in range(4))
        fast = Backoff(base_s=0.05, cap_s=0.1)
        sources = {
            "right": (ConsulSource(fake.url, token="reader", datacenter="dc1"), right),
            "wrong": (ConsulSource(fake.url, token="nobody", backoff=fast), wrong),
            "anonymous": (ConsulSource(fake.url), anonymous),
            "elsewhere": (ConsulSource(fake.url, token="reader", datacenter="dc9", backoff=fast), elsewhere),
        }
        tasks = [await watching(source, registry) for source, registry in sources.values()]
        await wait_for(lambda: len(right.nodes()) == 1)
        await asyncio.wait_for(sources["anonymous"][0].synced.wait(), 2)
        assert anonymous.nodes() == []  # filtered by ACLs, as Consul does
        await asyncio.sleep(0.3)
        assert not sources["wrong"][0].synced.is_set()
        assert wrong.nodes() == []
        assert not sources["elsewhere"][0].synced.is_set()
        assert elsewhere.nodes() == []
    finally:
        for task in tasks:
            await stop(task)
        await fake.stop()


def test_an_entry_becomes_a_spec_with_its_metadata() -> None:
    entry = {
        "Node": {"Node": "host-1", "Address": "10.0.0.9", "Datacenter": "dc1"},
        "Service": {
            "ID": "distinfer-node-n1",
            "Address": "",
            "Port": 8001,
            "Tags": ["distinfer", "model=digits", "model=digits_a", "zone=a"],
            "Meta": {"node_id": "n1", "models": "digits,digits_a", "runtime": "onnx", "device": "cpu", "memory": "8"},
            "Weights": {"Passing": 3, "Warning": 1},
        },
    }
    spec = spec_from_entry(entry)
    assert spec.url == "http://10.0.0.9:8001"  # no service address: the node's
    assert spec.node_id == "n1"
    assert spec.weight == 3.0
    assert dict(spec.labels) == {
        "zone": "a",
        "models": "digits,digits_a",
        "runtime": "onnx",
        "device": "cpu",
        "memory": "8",
        "consul_service_id": "distinfer-node-n1",
        "consul_node": "host-1",
        "datacenter": "dc1",
    }
    v6 = spec_from_entry({"Node": {}, "Service": {"ID": "x", "Address": "::1", "Port": 1, "Meta": {"scheme": "https"}}})
    assert v6.url == "https://[::1]:1"
    assert v6.node_id == "x"
    for bad in ({"Node": {}, "Service": {"ID": "x", "Port": 1}}, {"Service": {"Address": "a", "Port": 0}}, {"Node": 1}):
        with pytest.raises(ValueError, match=r"Service|address"):
            spec_from_entry(bad)


def test_agent_urls() -> None:
    assert consul_address("http://127.0.0.1:8500") == ("http", "127.0.0.1", 8500)
    assert consul_address("consul.local") == ("http", "consul.local", 8500)
    assert consul_address("https://c:443") == ("https", "c", 443)
    for bad in ("ftp://c:1", "http://", "http://c:99999"):
        with pytest.raises(ValueError, match="Consul URL"):
            consul_address(bad)
    with pytest.raises(ValueError, match="Consul URL"):
        ConsulSource("ftp://nope")
