"""The fake Consul agent keeps Consul's documented semantics: indexes, blocking, checks, ACLs, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from bench.fakes.consul import FakeConsul
from bench.fakes.consul_state import ConsulError, parse_duration


@pytest.fixture
async def consul() -> AsyncIterator[tuple[FakeConsul, httpx.AsyncClient]]:
    fake = FakeConsul(min_deregister_s=0, reap_interval_s=0.05)
    url = await fake.start()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield fake, client
    await fake.stop()


def index_of(response: httpx.Response) -> int:
    return int(response.headers["X-Consul-Index"])


SERVICE = {"Name": "web", "ID": "web-1", "Port": 80, "Address": "10.0.0.1", "Tags": ["v1"], "Meta": {"m": "1"}}


async def test_a_blocking_query_waits_for_a_write_and_answers_the_new_index(
    consul: tuple[FakeConsul, httpx.AsyncClient],
) -> None:
    _, client = consul
    first = await client.get("/v1/health/service/web")
    assert first.status_code == 200
    assert first.json() == []
    index = index_of(first)

    async def register_later() -> None:
        await asyncio.sleep(0.2)
        assert (await client.put("/v1/agent/service/register", json=SERVICE)).status_code == 200

    started = time.monotonic()
    writer = asyncio.create_task(register_later())
    woke = await client.get("/v1/health/service/web", params={"index": index, "wait": "5s"})
    await writer
    assert 0.15 < time.monotonic() - started < 2.0
    assert index_of(woke) > index
    (entry,) = woke.json()
    assert entry["Service"]["ID"] == "web-1"
    assert entry["Service"]["Meta"] == {"m": "1"}
    assert entry["Node"]["Address"] == "127.0.0.1"
    assert [c["CheckID"] for c in entry["Checks"]] == ["serfHealth"]


async def test_without_a_change_the_query_answers_after_wait_plus_at_most_a_sixteenth(
    consul: tuple[FakeConsul, httpx.AsyncClient],
) -> None:
    _, client = consul
    index = index_of(await client.get("/v1/health/service/web"))
    started = time.monotonic()
    same = await client.get("/v1/health/service/web", params={"index": index, "wait": "400ms"})
    elapsed = time.monotonic() - started
    assert index_of(same) == index
    assert 0.39 < elapsed < 0.4 * 17 / 16 + 0.5


async def test_a_name_without_instances_answers_the_catalog_index_and_wakes_on_any_write(
    consul: tuple[FakeConsul, httpx.AsyncClient],
) -> None:
    _, client = consul
    index = index_of(await client.get("/v1/health/service/nothing"))
    await client.put("/v1/agent/service/register", json=SERVICE)
    woke = await client.get("/v1/health/service/nothing", params={"index": index, "wait": "2s"})
    assert index_of(woke) > index
    assert woke.json() == []


async def test_passing_and_tag_filters_and_catalog_registered_nodes(
    consul: tuple[FakeConsul, httpx.AsyncClient],
) -> None:
    _, client = consul
    external = {
        "Node": "ext",
        "Address": "10.1.1.1",
        "Service": {"Service": "web", "ID": "web-ext", "Port": 81, "Tags": ["v2"]},
        "Check": {"CheckID": "c1", "Name": "ext", "ServiceID": "web-ext", "Status": "critical"},
    }
    assert (await client.put("/v1/catalog/register", json=external)).json() is True
    await client.put("/v1/agent/service/register", json=SERVICE)
    everyone = (await client.get("/v1/health/service/web")).json()
    assert sorted(e["Service"]["ID"] for e in everyone) == ["web-1", "web-ext"]
    passing = (await client.get("/v1/health/service/web", params={"passing": "1"})).json()
    assert [e["Service"]["ID"] for e in passing] == ["web-1"]
    tagged = (await client.get("/v1/health/service/web", params=[("tag", "v2")])).json()
    assert [e["Service"]["ID"] for e in tagged] == ["web-ext"]
    external["Check"] = {**external["Check"], "Status": "passing"}  # type: ignore[dict-item]
    await client.put("/v1/catalog/register", json=external)
    passing = (await client.get("/v1/health/service/web", params={"passing": ""})).json()
    assert len(passing) == 2
    rows = (await client.get("/v1/catalog/service/web")).json()
    assert {r["ServiceID"]: r["ServicePort"] for r in rows} == {"web-1": 80, "web-ext": 81}
    assert (await client.get("/v1/catalog/services")).json() == {"web": ["v1", "v2"]}
    await client.put("/v1/catalog/deregister", json={"Node": "ext"})
    assert [e["Service"]["ID"] for e in (await client.get("/v1/health/service/web")).json()] == ["web-1"]


async def test_http_checks_run_and_critical_services_are_reaped(
    consul: tuple[FakeConsul, httpx.AsyncClient],
) -> None:
    _, client = consul
    answer = {"status": 200}

    async def ready(_: web.Request) -> web.Response:
        return web.Response(status=answer["status"])

    app = web.Application()
    app.router.add_get("/ready", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        check = {"HTTP": f"http://127.0.0.1:{port}/ready", "Interval": "100ms", "Timeout": "1s"}
        await client.put("/v1/agent/service/register", json={**SERVICE, "Check": check})

        async def status() -> str:
            checks = (await client.get("/v1/agent/checks")).json()
            return str(checks["service:web-1"]["Status"]) if checks else "gone"

        async def becomes(wanted: str) -> None:
            deadline = time.monotonic() + 5
            while (now := await status()) != wanted:
                assert time.monotonic() < deadline, f"check stayed {now}, wanted {wanted}"
                await asyncio.sleep(0.02)

        await becomes("passing")  # it starts critical: no Status in the definition
        answer["status"] = 429
        await becomes("warning")
        answer["status"] = 503
        await becomes("critical")
        check["DeregisterCriticalServiceAfter"] = "300ms"
        await client.put("/v1/agent/service/register", json={**SERVICE, "Check": check})
        await becomes("gone")
        assert (await client.get("/v1/agent/services")).json() == {}
    finally:
        await runner.cleanup()


async def test_ttl_checks_and_keys_in_any_case(consul: tuple[FakeConsul, httpx.AsyncClient]) -> None:
    _, client = consul
    body = {"name": "web", "id": "w", "port": 1, "check": {"ttl": "300ms", "status": "passing", "checkid": "t"}}
    await client.put("/v1/agent/service/register", json=body)
    checks = (await client.get("/v1/agent/checks")).json()
    assert checks["t"]["Status"] == "passing"
    assert (await client.put("/v1/agent/check/fail/t")).status_code == 200
    assert (await client.get("/v1/agent/checks")).json()["t"]["Status"] == "critical"
    await client.put("/v1/agent/check/pass/t")
    deadline = time.monotonic() + 3
    while (await client.get("/v1/agent/checks")).json()["t"]["Status"] != "critical":
        assert time.monotonic() < deadline, "TTL did not expire"
        await asyncio.sleep(0.05)
    assert (await client.put("/v1/agent/check/pass/nope")).status_code == 404
    assert (await client.get("/v1/agent/service/w")).json()["Port"] == 1
    assert (await client.get("/v1/agent/service/nope")).status_code == 404


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"Port": 1}, "Missing service name"),
        ({"Name": "w", "Port": "x"}, "port"),
        ({"Name": "w", "Meta": {"bad key": "v"}}, "Meta"),
        ({"Name": "w", "Meta": {"k": "v" * 513}}, "Meta"),
        ({"Name": "w", "Check": {"HTTP": "http://x"}}, "Interval"),
        ({"Name": "w", "Check": {"TCP": "x:1", "Interval": "1s"}}, "http and ttl"),
        ({"Name": "w", "Check": {"Interval": "1s"}}, "must be specified"),
        ({"Name": "w", "Check": {"TTL": "1s", "Status": "fine"}}, "status"),
        ({"Name": "w", "Check": {"TTL": "soon"}}, "Invalid"),
    ],
)
async def test_bad_registrations_are_400_with_consul_words(
    consul: tuple[FakeConsul, httpx.AsyncClient], body: dict[str, object], says: str
) -> None:
    _, client = consul
    response = await client.put("/v1/agent/service/register", json=body)
    assert response.status_code == 400
    assert says in response.text
    assert (await client.get("/v1/agent/services")).json() == {}


async def test_bad_query_parameters_and_other_datacenters(consul: tuple[FakeConsul, httpx.AsyncClient]) -> None:
    _, client = consul
    assert (await client.get("/v1/health/service/w", params={"index": "x"})).status_code == 400
    assert (await client.get("/v1/health/service/w", params={"index": 1, "wait": "ages"})).status_code == 400
    other = await client.get("/v1/health/service/w", params={"dc": "dc2"})
    assert other.status_code == 500
    assert "No path to datacenter" in other.text
    assert (await client.get("/v1/health/service/w", params={"dc": "dc1"})).status_code == 200
    assert (await client.put("/v1/agent/service/deregister/nope")).status_code == 404
    assert (await client.put("/v1/agent/service/register", content=b"{nope")).status_code == 400


async def test_acl_tokens() -> None:
    fake = FakeConsul(acl_tokens={"reader": "read", "writer": "write"})
    url = await fake.start()
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            denied = await client.put("/v1/agent/service/register", json=SERVICE)
            assert denied.status_code == 403
            assert "Permission denied" in denied.text
            as_reader = await client.put(
                "/v1/agent/service/register", json=SERVICE, headers={"X-Consul-Token": "reader"}
            )
            assert as_reader.status_code == 403
            bad = await client.get("/v1/health/service/web", headers={"X-Consul-Token": "nobody"})
            assert bad.status_code == 403
            assert "ACL not found" in bad.text
            ok = await client.put("/v1/agent/service/register", json=SERVICE, params={"token": "writer"})
            assert ok.status_code == 200
            anonymous = await client.get("/v1/health/service/web")
            assert anonymous.json() == []
            assert anonymous.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
            bearer = await client.get("/v1/health/service/web", headers={"Authorization": "Bearer reader"})
            assert len(bearer.json()) == 1
    finally:
        await fake.stop()


async def test_rewind_sends_the_index_back(consul: tuple[FakeConsul, httpx.AsyncClient]) -> None:
    fake, client = consul
    for n in range(3):
        await client.put("/v1/agent/service/register", json={**SERVICE, "ID": f"web-{n}"})
    high = index_of(await client.get("/v1/health/service/web"))
    fake.rewind(2)
    low = index_of(await client.get("/v1/health/service/web"))
    assert low < high


def test_go_durations() -> None:
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("10") == 10.0
    assert parse_duration(3) == 3.0
    for bad in ("", "1x", "s", "1s2", None):
        with pytest.raises(ConsulError):
            parse_duration(bad)
