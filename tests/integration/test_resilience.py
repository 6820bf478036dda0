"""Fault tolerance with real node processes: kills, 500s, 4xx, deadlines, hedging, affinity, trust, panic.

Nodes run with `--fault-control`, so a test makes one slow or sick (`PUT /v2/faults`) and heals
it again without a restart; the gateway is the plugin mounted in a real FastAPI app.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_plugin.processes import ServerProcess, start_node
from gateway_plugin.settings import BalancerSettings, TrustSettings
from tests.integration.conftest import mounted, settings_for
from tests.integration.polling import until

PREFIX = "/api/v1/distributed"
StartNodes = Callable[..., list[ServerProcess]]
IMAGE = [[0.0, 0.0, 0.3, 0.8, 0.8, 0.1, 0.0, 0.0]] * 8
BODY: dict[str, Any] = {"model": "digits", "inputs": IMAGE}


def set_faults(node: ServerProcess, **spec: Any) -> dict[str, Any]:
    response = httpx.put(f"{node.url}/v2/faults", json=spec, timeout=5)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def served(node: ServerProcess) -> int:
    return int(httpx.get(f"{node.url}/v2/faults", timeout=5).json()["served"])


@pytest.fixture(scope="module")
def sick_nodes(repository: Path) -> Iterator[list[ServerProcess]]:
    """Three nodes whose faults tests switch on and off; zones a, b, a for the capability strategy."""
    nodes = [
        start_node(repository, node_id, extra_args=["--models", "digits", "--fault-control", "--label", f"zone={z}"])
        for node_id, z in (("sick-a", "a"), ("sick-b", "b"), ("sick-c", "a"))
    ]
    for node in nodes:
        node.wait_ready()
    yield nodes
    for node in nodes:
        node.stop()


@pytest.fixture
def healthy(sick_nodes: list[ServerProcess]) -> Iterator[list[ServerProcess]]:
    for node in sick_nodes:
        set_faults(node)
    yield sick_nodes
    for node in sick_nodes:
        if node.alive:
            set_faults(node)


async def test_node_killed_mid_load_loses_no_request_and_is_ejected_within_a_second(
    start_nodes: StartNodes, healthy: list[ServerProcess]
) -> None:
    nodes = [*start_nodes("kill-1", extra_args=["--models", "digits"]), *healthy]
    # Probes every 5 s: the death must be noticed from the traffic itself.
    async with mounted(settings_for([n.url for n in nodes], probe_interval_s=5)) as (client, distributed):
        statuses: Counter[int] = Counter()
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                statuses[(await client.post(f"{PREFIX}/inference", json=BODY)).status_code] += 1

        workers = [asyncio.create_task(load()) for _ in range(8)]
        await until(lambda: statuses.total() >= 60)
        victim = distributed.registry.get(nodes[0].url)
        assert victim is not None
        assert distributed.pool.status(victim).value == "online"
        killed_at = time.monotonic()
        nodes[0].kill()

        def ejected() -> bool:
            node = distributed.registry.get(nodes[0].url)
            return node is not None and distributed.pool.status(node).value != "online"

        await until(ejected, every_s=0.002)
        ejection_s = time.monotonic() - killed_at
        sent_at_kill = statuses.total()
        await until(lambda: statuses.total() >= sent_at_kill + 150)
        stop.set()
        await asyncio.gather(*workers)
        picked_after = Counter(
            [(await client.post(f"{PREFIX}/inference", json=BODY)).json()["node_id"] for _ in range(20)]
        )
    assert set(statuses) == {200}, statuses  # zero failed client requests: every one was retried
    assert ejection_s < 1.0, f"dead node ejected after {ejection_s:.3f}s"
    assert "kill-1" not in picked_after


async def test_node_answering_500s_is_ejected_and_recovers_when_it_heals(healthy: list[ServerProcess]) -> None:
    sick, *_ = healthy
    balancer = BalancerSettings(
        probe_interval_s=0.2, eject_consecutive_failures=3, eject_base_s=0.5, eject_max_s=2, max_attempts=3
    )
    async with mounted(settings_for([n.url for n in healthy], balancer=balancer)) as (client, _):

        async def breaker() -> dict[str, Any]:
            nodes = (await client.get(f"{PREFIX}/nodes")).json()
            return next(n for n in nodes if n["node_id"] == "sick-a")  # type: ignore[no-any-return]

        set_faults(sick, error_rate=1.0)
        codes: Counter[int] = Counter()
        seen: set[tuple[str, str]] = set()
        for _ in range(20):  # round robin keeps sending it traffic: the breaker is what stops it
            response = await client.post(f"{PREFIX}/inference", json={**BODY, "strategy": "round_robin"})
            codes[response.status_code] += 1
            entry = await breaker()
            seen.add((entry["breaker"], entry["status"]))
        assert ("open", "error") in seen  # ejected, and shown as such
        assert codes == {200: 20}  # the client never saw the 500s
        set_faults(sick)  # healed

        async def back_in_rotation() -> bool:
            response = await client.post(f"{PREFIX}/inference", json={**BODY, "strategy": "round_robin"})
            codes[response.status_code] += 1
            return response.json()["node_id"] == "sick-a"

        await until(back_in_rotation, timeout_s=15, every_s=0.05)  # half-open trial succeeded
        entry = await breaker()
    assert entry["breaker"] == "closed"
    assert entry["status"] == "online"
    assert set(codes) == {200}


async def test_a_node_answering_429_is_left_alone_for_its_retry_after(healthy: list[ServerProcess]) -> None:
    """Regression: round robin kept sending every third request to a node shedding load (429), each
    of them paying a retry; now the node is `busy` for its Retry-After and then back in rotation."""
    busy, *_ = healthy
    async with mounted(settings_for([n.url for n in healthy])) as (client, _):

        async def status_of_busy() -> str:
            nodes = (await client.get(f"{PREFIX}/nodes")).json()
            return str(next(n for n in nodes if n["node_id"] == "sick-a")["status"])

        set_faults(busy, busy_rate=1.0, retry_after_s=30)
        before = served(busy)
        codes: Counter[int] = Counter()
        answered_by: Counter[str] = Counter()
        for _ in range(30):
            response = await client.post(f"{PREFIX}/inference", json={**BODY, "strategy": "round_robin"})
            codes[response.status_code] += 1
            answered_by[response.json().get("node_id", "?")] += 1
        assert codes == {200: 30}  # retried elsewhere: the client never saw a 429
        assert "sick-a" not in answered_by
        assert served(busy) - before == 1  # asked once; its Retry-After kept every later request away
        assert await status_of_busy() == "busy"
        scrape = (await client.get("/metrics")).text  # the same state for dashboards and alerts
        assert 'distinfer_gateway_node_status{node="sick-a",state="busy"} 1.0' in scrape
        assert 'distinfer_gateway_node_status{node="sick-a",state="online"} 0.0' in scrape
        set_faults(busy)  # it can take work again, but asked for 30 s: the gateway waits (at most 10 s)
        for _ in range(6):
            response = await client.post(f"{PREFIX}/inference", json={**BODY, "strategy": "round_robin"})
            assert response.json()["node_id"] != "sick-a"


async def test_4xx_is_never_retried(healthy: list[ServerProcess]) -> None:
    async with mounted(settings_for([n.url for n in healthy])) as (client, _):
        before = sum(served(node) for node in healthy)
        response = await client.post(f"{PREFIX}/inference", json={**BODY, "outputs": ["no_such_output"]})
        after = sum(served(node) for node in healthy)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert after - before == 1  # one node saw it once


async def test_deadline_is_respected_across_attempts(healthy: list[ServerProcess]) -> None:
    for node in healthy:
        set_faults(node, latency_ms=3000)
    async with mounted(settings_for([n.url for n in healthy])) as (client, _):
        began = time.monotonic()
        response = await client.post(f"{PREFIX}/inference", json={**BODY, "timeout_ms": 300})
        took = time.monotonic() - began
    assert response.status_code == 504, response.text
    assert 0.29 < took < 1.5


async def test_hedging_returns_the_fast_answer(healthy: list[ServerProcess]) -> None:
    set_faults(healthy[0], latency_ms=2000)
    balancer = BalancerSettings(probe_interval_s=0.2, hedging=True, hedge_after_ms=50)
    async with mounted(settings_for([n.url for n in healthy], balancer=balancer)) as (client, _):
        timings = []
        for _ in range(6):
            began = time.monotonic()
            response = await client.post(f"{PREFIX}/inference", json={**BODY, "strategy": "round_robin"})
            timings.append((time.monotonic() - began, response))
    assert all(r.status_code == 200 for _, r in timings)
    assert {r.json()["node_id"] for _, r in timings} <= {"sick-b", "sick-c"}
    hedged = [took for took, r in timings if r.json()["attempts"] == 2]
    assert hedged  # round robin sent some to the slow node first...
    assert max(took for took, _ in timings) < 1.0  # ...and the hedge answered long before it


async def test_affinity_is_sticky_and_reshuffles_minimally(healthy: list[ServerProcess]) -> None:
    async with mounted(settings_for([n.url for n in healthy])) as (client, distributed):

        async def assignment(sessions: range) -> dict[int, str]:
            placed = {}
            for session in sessions:
                body = {**BODY, "strategy": "model_affinity"}
                if session % 2:
                    response = await client.post(
                        f"{PREFIX}/inference", json=body, headers={"X-Session-ID": f"s{session}"}
                    )
                else:
                    body["parameters"] = {"session_id": f"s{session}"}
                    response = await client.post(f"{PREFIX}/inference", json=body)
                assert response.status_code == 200
                placed[session] = response.json()["node_id"]
            return placed

        sessions = range(150)
        first = await assignment(sessions)
        assert await assignment(sessions) == first  # sticky
        assert len(set(first.values())) == 3
        leaving = healthy[1]
        distributed.registry.reset("static", [n.spec for n in distributed.registry.nodes() if n.url != leaving.url])
        after = await assignment(sessions)
    moved = {s for s in sessions if first[s] != after[s]}
    assert moved == {s for s in sessions if first[s] == "sick-b"}  # only the leaving node's sessions moved
    assert 0.15 < len(moved) / len(sessions) < 0.5  # about a third with three nodes


async def test_capability_routes_by_advertised_labels(healthy: list[ServerProcess]) -> None:
    balancer = BalancerSettings(probe_interval_s=0.2, model_requirements="digits:zone=b,memory_mb>=64")
    async with mounted(settings_for([n.url for n in healthy], balancer=balancer)) as (client, _):
        nodes = (await client.get(f"{PREFIX}/nodes")).json()
        picked = Counter()
        for _ in range(10):
            response = await client.post(f"{PREFIX}/inference", json={**BODY, "strategy": "capability"})
            picked[response.json()["node_id"]] += 1
    assert picked == {"sick-b": 10}
    labels = {n["node_id"]: n["labels"] for n in nodes}
    assert labels["sick-a"]["zone"] == "a"
    assert {"device", "cpus", "capacity", "memory_mb"} <= set(labels["sick-b"])


async def test_panic_mode_routes_to_the_least_bad_and_says_so(healthy: list[ServerProcess]) -> None:
    for node in healthy:
        set_faults(node, error_rate=1.0)
    balancer = BalancerSettings(probe_interval_s=0.2, eject_consecutive_failures=2, eject_base_s=30, eject_max_s=60)
    async with mounted(settings_for([n.url for n in healthy], balancer=balancer)) as (client, _):
        for _ in range(6):
            assert (await client.post(f"{PREFIX}/inference", json=BODY)).status_code == 503
        health = (await client.get(f"{PREFIX}/health")).json()
        statuses = {n["status"] for n in (await client.get(f"{PREFIX}/nodes")).json()}
        for node in healthy:
            set_faults(node)  # healed, but every breaker is open for 30 s
        answered = await client.post(f"{PREFIX}/inference", json=BODY)
    assert health["panic"] == {"active": True, "models": ["digits"]}
    assert health["ready"] is True
    assert statuses == {"error"}
    assert answered.status_code == 200  # panic: served by the least bad rather than refused
    assert answered.json()["mode"] == "distributed"


def metric(text: str, name: str, **labels: str) -> float | None:
    """The sample `name{labels}` of a Prometheus scrape; None when the scrape has no such sample."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def test_panic_mode_shows_in_metrics_and_clears_when_the_nodes_come_back(healthy: list[ServerProcess]) -> None:
    for node in healthy:
        set_faults(node, error_rate=1.0)
    balancer = BalancerSettings(probe_interval_s=0.2, eject_consecutive_failures=2, eject_base_s=3, eject_max_s=6)
    async with mounted(settings_for([n.url for n in healthy], balancer=balancer)) as (client, _):

        async def scrape() -> str:
            return (await client.get("/metrics")).text

        await until(lambda: _panic_is(scrape, 0.0), every_s=0.1)  # probed: digits is listed, not in panic
        before = await scrape()
        assert metric(before, "distinfer_gateway_panic_mode", model="digits") == 0
        assert metric(before, "distinfer_gateway_panic_picks_total", model="digits") == 0
        for _ in range(6):  # every attempt fails: all three breakers open
            assert (await client.post(f"{PREFIX}/inference", json=BODY)).status_code == 503
        for node in healthy:
            set_faults(node)  # healed, but every breaker stays open for 3 s
        answered = await client.post(f"{PREFIX}/inference", json=BODY)
        during = await scrape()
        # The ejections end by time alone: trials are admitted, so the model is out of panic.
        await until(lambda: _panic_is(scrape, 0.0), every_s=0.1)
        after = await scrape()
        recovered = await client.post(f"{PREFIX}/inference", json=BODY)
        last = await scrape()
    assert answered.status_code == 200  # served in panic
    assert metric(during, "distinfer_gateway_panic_mode", model="digits") == 1
    panic_picks = metric(during, "distinfer_gateway_panic_picks_total", model="digits")
    assert panic_picks is not None
    assert panic_picks >= 1
    assert metric(after, "distinfer_gateway_panic_mode", model="digits") == 0
    assert recovered.status_code == 200
    assert metric(last, "distinfer_gateway_panic_picks_total", model="digits") == metric(
        after, "distinfer_gateway_panic_picks_total", model="digits"
    )  # out of panic: a trial, not a panic pick


async def _panic_is(scrape: Callable[[], Awaitable[str]], value: float) -> bool:
    return metric(await scrape(), "distinfer_gateway_panic_mode", model="digits") == value


async def test_a_node_that_disagrees_is_quarantined(
    healthy: list[ServerProcess], repository: Path, tmp_path: Path
) -> None:
    # A "Byzantine" node: it serves another network's weights under the name digits.
    liar_repo = tmp_path / "models"
    shutil.copytree(repository / "digits_b", liar_repo / "digits")
    config = liar_repo / "digits" / "config.json"
    config.write_text(config.read_text().replace('"digits_b"', '"digits"'))
    liar = start_node(liar_repo, "liar")
    try:
        liar.wait_ready()
        trust = TrustSettings(validation_sample_rate=1.0, quarantine_s=60)
        urls = [n.url for n in healthy] + [liar.url]
        rng = np.random.default_rng(1)
        async with mounted(settings_for(urls, trust=trust)) as (client, _):

            async def quarantined() -> bool:
                for _ in range(4):
                    body = {**BODY, "inputs": rng.random((8, 8)).tolist(), "strategy": "round_robin"}
                    assert (await client.post(f"{PREFIX}/inference", json=body)).status_code == 200
                nodes = (await client.get(f"{PREFIX}/nodes")).json()
                return any(n["node_id"] == "liar" and n["quarantined"] for n in nodes)

            await until(quarantined, timeout_s=20, every_s=0.05)
            after = Counter()
            for _ in range(12):
                response = await client.post(f"{PREFIX}/inference", json={**BODY, "strategy": "round_robin"})
                after[response.json()["node_id"]] += 1
            nodes = {n["node_id"]: n for n in (await client.get(f"{PREFIX}/nodes")).json()}
    finally:
        liar.stop()
    assert "liar" not in after
    assert nodes["liar"]["status"] == "error"
    assert nodes["liar"]["trust"] < 0.5
    assert all(not nodes[name]["quarantined"] for name in ("sick-a", "sick-b", "sick-c"))


async def test_crash_after_n_knob_kills_the_node_and_no_request_is_lost(
    start_nodes: StartNodes, healthy: list[ServerProcess]
) -> None:
    (crashing,) = start_nodes("crashes", extra_args=["--models", "digits", "--fault-crash-after", "3"])
    urls = [crashing.url, *(n.url for n in healthy)]
    async with mounted(settings_for(urls, probe_interval_s=5)) as (client, _):
        codes = Counter()
        for _ in range(24):  # round robin: the crashing node gets its 4th request in here
            response = await client.post(f"{PREFIX}/inference", json={**BODY, "strategy": "round_robin"})
            codes[response.status_code] += 1
        nodes = {n["node_id"]: n["status"] for n in (await client.get(f"{PREFIX}/nodes")).json()}
    await until(lambda: not crashing.alive, timeout_s=10)
    assert codes == {200: 24}
    assert nodes["crashes"] == "offline"
