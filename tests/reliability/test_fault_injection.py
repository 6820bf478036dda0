"""Faults under load, with real processes: no request fails or is lost while another node (or Redis) serves."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.chaos.cluster import Cluster
from bench.chaos.run import ALL_SCENARIOS
from bench.chaos.scenarios import FAULTY, ChaosParams

pytestmark = pytest.mark.timeout(180)


# Task scenarios take two gateways and a Redis each: the long run (`distinfer bench chaos`) has them.
LONG = {"redis_restart", "tasks_gateway_restart"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.chaos_long) if n in LONG else n for n in ALL_SCENARIOS]
)
async def test_single_fault_loses_and_fails_nothing(cluster: Cluster, figures_log: dict[str, Any], name: str) -> None:
    if not cluster.nodes[FAULTY].alive:  # a previous scenario failed half-way: start from a full cluster
        cluster.start_nodes(FAULTY)
    results = await ALL_SCENARIOS[name](cluster, ChaosParams.short())
    for result in results:
        figures_log[result.name] = result.as_dict()
    assert results
    if all(result.status == "skipped" for result in results):
        pytest.skip("; ".join(note for result in results for note in result.notes))
    for result in results:
        summary = json.dumps(result.as_dict(), indent=1, default=str)
        assert result.figures["sent"] > 20, summary  # the traffic really flowed through the fault
        for target, verdict in result.targets.items():
            assert verdict["met"], f"{result.name}: target {target} not met\n{summary}"
