"""One missed readiness probe does not take a node out; a run of misses does; a refused connection at once.

Regression: a node busy with a large batch missed a single 1 s probe and was marked offline, so
the rest of the batch got 503 (found by the batch bench and the chaos suite).
"""

from __future__ import annotations

import aiohttp

from balancer.health import HealthProber
from discovery.node import NodeSpec, NodeStatus
from discovery.registry import NodeRegistry
from gateway_plugin.processes import free_port
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
