"""The prober follows a node that starts or stops serving a model, and never lifts an admin's hold.

The node here is a small v2 server whose model list the test changes between probe rounds,
reached by the real NodeClient over loopback HTTP.
"""

from __future__ import annotations

import aiohttp

from balancer.health import HealthProber
from discovery.node import NodeSpec, NodeStatus
from discovery.registry import NodeRegistry
from tests.unit.balancer.conftest import V2Node
from worker.client import NodeClient


async def test_a_model_loaded_or_dropped_is_routed_after_one_probe_round(served: tuple[V2Node, str]) -> None:
    node, url = served
    registry = NodeRegistry()
    registry.reset("static", [NodeSpec(url)])
    async with aiohttp.ClientSession() as session:
        # A full re-description only every 1000 rounds: what follows the models is the index check.
        prober = HealthProber(registry, NodeClient(session), interval_s=1, refresh_every=1000)
        await prober.probe_all()
        current = registry.get(url)
        assert current is not None
        assert current.status is NodeStatus.ONLINE
        assert sorted(current.models) == ["digits"]
        assert current.node_id == "v2-fake"
        node.models = {"digits", "digits_a"}
        await prober.probe_all()
        current = registry.get(url)
        assert current is not None
        assert sorted(current.models) == ["digits", "digits_a"]
        node.models = {"digits_a"}
        await prober.probe_all()
        current = registry.get(url)
        assert current is not None
        assert sorted(current.models) == ["digits_a"]
        calls = node.index_calls
        await prober.probe_all()
        assert node.index_calls == calls + 1  # one small call a round when nothing changed
        # Regression (review): a model reloaded under a new version kept its old metadata (and the new
        # version was a 404) until the full refresh, ten rounds later by default.
        node.version = "2"
        await prober.probe_all()
        current = registry.get(url)
        assert current is not None
        assert current.models["digits_a"].version == "2"


async def test_probes_do_not_lift_a_hold_and_a_node_that_misses_them_goes_offline(served: tuple[V2Node, str]) -> None:
    node, url = served
    registry = NodeRegistry()
    registry.reset("static", [NodeSpec(url)])
    async with aiohttp.ClientSession() as session:
        prober = HealthProber(registry, NodeClient(session), interval_s=1)
        await prober.probe_all()
        registry.set_manual_status(url, NodeStatus.OFFLINE)
        for _ in range(3):
            await prober.probe_all()
        held = registry.get(url)
        assert held is not None
        assert held.status is NodeStatus.OFFLINE
        assert held.health is NodeStatus.ONLINE
        registry.set_manual_status(url, None)
        node.ready = False
        for _ in range(3):  # a run of missed probes, not a single one, takes a node out
            await prober.probe_all()
        stale = registry.get(url)
        assert stale is not None
        assert stale.status is NodeStatus.OFFLINE
        node.ready = True
        await prober.probe_all()
        back = registry.get(url)
        assert back is not None
        assert back.status is NodeStatus.ONLINE
