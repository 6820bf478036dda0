"""One missed readiness probe does not take a node out; a run of misses does; a refused connection at once.

Regression: a node busy with a large batch missed a single 1 s probe and was marked offline, so
the rest of the batch got 503 (found by the batch bench and the chaos suite).
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from balancer.health import HealthProber
from discovery.node import NodeSpec, NodeStatus
from discovery.registry import NodeRegistry
from gateway_plugin.processes import free_port
from tests.background import in_background
from tests.integration.polling import until
from tests.unit.balancer.conftest import V2Node
from worker.client import NodeClient


async def _status_after_rounds(url: str, node: V2Node | None, rounds: int, *, healthy_first: bool = True) -> NodeStatus:
    registry = NodeRegistry()
    registry.reset("static", [NodeSpec(url)])
    async with aiohttp.ClientSession() as session:
        prober = HealthProber(registry, NodeClient(session, probe_timeout_s=1), interval_s=1, unhealthy_after=3)
        if healthy_first:
            await prober.probe_all()
            assert registry.nodes()[0].health is NodeStatus.ONLINE
        if node is not None:
            node.ready = False
        for _ in range(rounds):
            await prober.probe_all()
    return registry.nodes()[0].health


async def test_one_or_two_missed_probes_keep_the_node_online(served: tuple[V2Node, str]) -> None:
    node, url = served
    assert await _status_after_rounds(url, node, rounds=2) is NodeStatus.ONLINE


async def test_three_missed_probes_take_the_node_offline(served: tuple[V2Node, str]) -> None:
    node, url = served
    assert await _status_after_rounds(url, node, rounds=3) is NodeStatus.OFFLINE


async def test_a_refused_connection_takes_the_node_offline_at_once() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    assert await _status_after_rounds(dead, None, rounds=1, healthy_first=False) is NodeStatus.OFFLINE


async def test_after_the_startup_round_the_prober_waits_an_interval_unless_a_node_arrives(
    served: tuple[V2Node, str],
) -> None:
    node, url = served
    registry = NodeRegistry()
    async with aiohttp.ClientSession() as session:
        # In the lifespan's order: the prober exists before discovery adds the nodes (each add wakes it).
        prober = HealthProber(registry, NodeClient(session, probe_timeout_s=1), interval_s=30)
        registry.reset("static", [NodeSpec(url)])
        await prober.probe_all()  # what the lifespan does before serving
        after_startup = node.health_calls
        async with in_background(prober.run()):
            await asyncio.sleep(0.3)
            assert node.health_calls == after_startup  # no second round back to back
            registry.reset("static", [NodeSpec(url), NodeSpec(f"http://127.0.0.1:{free_port()}")])
            await until(lambda: node.health_calls == after_startup + 1, timeout_s=5)  # a new node: a round at once


async def test_a_prober_that_never_ran_probes_at_once(served: tuple[V2Node, str]) -> None:
    node, url = served
    registry = NodeRegistry()
    registry.reset("static", [NodeSpec(url)])
    async with aiohttp.ClientSession() as session:
        prober = HealthProber(registry, NodeClient(session, probe_timeout_s=1), interval_s=30)
        async with in_background(prober.run()):
            await until(lambda: node.health_calls == 1, timeout_s=5)


async def test_a_startup_round_cut_short_is_followed_by_a_round_at_once(served: tuple[V2Node, str]) -> None:
    _, url = served
    registry = NodeRegistry()
    async with aiohttp.ClientSession() as session:
        prober = HealthProber(registry, NodeClient(session, probe_timeout_s=1), interval_s=30)
        registry.reset("static", [NodeSpec(url)])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0):  # the lifespan's deadline, hit before any answer
                await prober.probe_all()
        async with in_background(prober.run()):
            await until(lambda: registry.nodes()[0].health is NodeStatus.ONLINE, timeout_s=5)  # not 30 s later


async def test_a_stop_just_after_a_node_is_added_stops_the_prober() -> None:
    """Regression: `asyncio.wait_for` on 3.11 drops a cancel that lands just after the wait it runs
    ends, so a shutdown right after `POST /nodes` left the prober looping and the lifespan hung."""
    registry = NodeRegistry()
    async with aiohttp.ClientSession() as session:
        prober = HealthProber(registry, NodeClient(session, probe_timeout_s=1), interval_s=30)
        await prober.probe_all()
        for _ in range(20):  # each try races the wake-up against the cancel in the same loop turns
            task = asyncio.create_task(prober.run())
            await asyncio.sleep(0.01)  # waiting for the next round (or a new node)
            registry.reset("static", [NodeSpec(f"http://127.0.0.1:{free_port()}")])  # wakes it
            await asyncio.sleep(0)  # the wait ends; its waiter is not resumed yet
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=3)
            assert task.cancelled()
            registry.reset("static", [])


async def test_the_misses_of_a_removed_node_are_forgotten(served: tuple[V2Node, str]) -> None:
    """Regression (audit): misses of removed nodes were kept for good, growing with discovery churn
    (DNS and Consul listings that come and go)."""
    node, url = served
    dead = f"http://127.0.0.1:{free_port()}"
    registry = NodeRegistry()
    registry.reset("static", [NodeSpec(url), NodeSpec(dead)])
    async with aiohttp.ClientSession() as session:
        prober = HealthProber(registry, NodeClient(session, probe_timeout_s=1), interval_s=1, unhealthy_after=3)
        node.ready = False
        await prober.probe_all()
        assert len(prober._misses) == 2  # the leak is the private table's size
        registry.reset("static", [])
        assert prober._misses == {}
